"""Beam search on top of the engine (the way vLLM's LLM.beam_search works): each step asks the
engine for one token of every live beam with 2 * beam_width logprobs, expands each beam by those
candidates and keeps the beam_width best. Every beam is a prompt that extends an earlier one by a
token, so the prefix cache shares the KV blocks of the common prefix instead of recomputing it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from fastpage.outputs import Logprob
from fastpage.sampling_params import SamplingParams

if TYPE_CHECKING:
    from fastpage.llm import LLM


@dataclasses.dataclass
class BeamSearchParams:
    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        for name in ("beam_width", "max_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")


@dataclasses.dataclass
class BeamSearchSequence:
    tokens: list[int]  # prompt + generated, as in vLLM
    logprobs: list[dict[int, Logprob]]  # per generated token: the candidates it was chosen from
    cum_logprob: float = 0.0
    text: str | None = None  # the generated part (without a final EOS)
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclasses.dataclass
class BeamSearchOutput:
    sequences: list[BeamSearchSequence]  # best first


def beam_score(tokens: list[int], cum_logprob: float, eos_token_ids: set[int], length_penalty: float) -> float:
    """vLLM's score: cumulative logprob over length ** length_penalty (the final EOS not counted)."""
    length = len(tokens) - (1 if tokens[-1] in eos_token_ids else 0)
    return cum_logprob / (length ** length_penalty)


@dataclasses.dataclass
class _Instance:
    num_prompt_tokens: int
    beams: list[BeamSearchSequence]
    completed: list[BeamSearchSequence] = dataclasses.field(default_factory=list)


def beam_search(llm: LLM, prompts: list, params: BeamSearchParams, use_tqdm: bool = False
                ) -> list[BeamSearchOutput]:
    engine = llm.llm_engine
    tokenizer = engine.tokenizer
    eos_token_ids = set(tokenizer.eos_token_ids)
    num_candidates = 2 * params.beam_width
    if num_candidates > engine.max_logprobs:
        raise ValueError(f"beam_width: beam search reads 2 * beam_width = {num_candidates} logprobs per step, "
                         f"more than max_logprobs ({engine.max_logprobs}).")
    step_params = SamplingParams(max_tokens=1, logprobs=num_candidates, temperature=params.temperature,
                                 detokenize=False)
    instances = []
    for prompt in prompts:
        _, prompt_token_ids = engine.tokenize_prompt(prompt)
        total = len(prompt_token_ids) + params.max_tokens
        if total > engine.max_model_len:
            raise ValueError(f"This model's maximum context length is {engine.max_model_len} tokens. However, "
                             f"you requested {total} tokens ({len(prompt_token_ids)} in the prompt, "
                             f"{params.max_tokens} in the completion).")
        instances.append(_Instance(len(prompt_token_ids), [BeamSearchSequence(prompt_token_ids, [])]))

    def score(beam: BeamSearchSequence) -> float:
        return beam_score(beam.tokens, beam.cum_logprob, eos_token_ids, params.length_penalty)

    steps = range(params.max_tokens)
    if use_tqdm:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="Beam search")
    for _ in steps:
        live = [(instance, beam) for instance in instances for beam in instance.beams]
        if not live:
            break
        outputs = llm.generate([{"prompt_token_ids": beam.tokens} for _, beam in live], step_params,
                               use_tqdm=False)
        expanded: dict[int, list[BeamSearchSequence]] = {id(instance): [] for instance in instances}
        for (instance, beam), output in zip(live, outputs):
            candidates = output.outputs[0].logprobs[0]
            for token_id, logprob in candidates.items():
                new_beam = BeamSearchSequence(beam.tokens + [token_id], beam.logprobs + [candidates],
                                              beam.cum_logprob + logprob.logprob)
                if token_id in eos_token_ids and not params.ignore_eos:
                    new_beam.finish_reason = "stop"
                    instance.completed.append(new_beam)
                else:
                    expanded[id(instance)].append(new_beam)
        for instance in instances:
            instance.beams = sorted(expanded[id(instance)], key=score, reverse=True)[:params.beam_width]

    results = []
    for instance in instances:
        for beam in instance.beams:
            beam.finish_reason = "length"
        best = sorted(instance.completed + instance.beams, key=score, reverse=True)[:params.beam_width]
        for beam in best:
            generated = beam.tokens[instance.num_prompt_tokens:]
            if beam.finish_reason == "stop" and not params.include_stop_str_in_output:
                generated = generated[:-1]
            beam.text = tokenizer.decode(generated, skip_special_tokens=True)
        results.append(BeamSearchOutput(best))
    return results
