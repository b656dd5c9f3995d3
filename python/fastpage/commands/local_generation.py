"""What `fastpage chat` and `fastpage generate` share: the sampling flags, building the engine, and
streaming one request's text to a terminal as the engine produces it."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TextIO

from fastpage.engine_args import EngineArgs
from fastpage.llm_engine import LLMEngine, Prompt
from fastpage.sampling_params import SamplingParams


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """The engine flags (EngineArgs, vLLM's names; --seed among them) and the sampling flags."""
    EngineArgs.add_cli_args(parser)
    sampling = parser.add_argument_group("sampling (default: the model's generation config, else vLLM's)")
    sampling.add_argument("--temperature", type=float, default=None, help="0 means greedy")
    sampling.add_argument("--top-p", type=float, default=None)
    sampling.add_argument("--top-k", type=int, default=None, help="0 or -1: off")
    sampling.add_argument("--max-tokens", type=int, default=None,
                          help="tokens per reply (default: until EOS or the context is full)")
    sampling.add_argument("--system", default=None, help="system message (uses the chat template)")


def build_engine(args: argparse.Namespace) -> LLMEngine:
    """The engine on --model, or on the default model (SmolLM2-135M-Instruct) when none is given."""
    return LLMEngine.from_engine_args(EngineArgs.from_cli_args(args))


def sampling_params_from_args(args: argparse.Namespace, engine: LLMEngine) -> SamplingParams:
    """Flags given on the command line over the model's defaults. The request seed is --seed, so a
    run is reproducible; max_tokens defaults to the rest of the context."""
    defaults = engine.default_sampling_params()
    overrides = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k}
    values = {name: value for name, value in overrides.items() if value is not None}
    values["max_tokens"] = args.max_tokens if args.max_tokens is not None else \
        engine.generation_defaults.get("max_tokens")
    values["seed"] = args.seed
    return dataclasses.replace(defaults, **values)


def stream_completion(engine: LLMEngine, request_id: str, prompt: Prompt, params: SamplingParams,
                      out: TextIO = sys.stdout) -> str:
    """Runs one request to the end, writing its text to `out` as it grows; returns the full text.
    Ctrl-C aborts the request (the engine stays usable) and re-raises."""
    engine.add_request(request_id, prompt, params)
    text, finished = "", False
    try:
        while not finished:
            for output in engine.step():
                if output.request_id != request_id:
                    continue
                new_text, finished = output.outputs[0].text, output.finished
                out.write(new_text[len(text):])
                out.flush()
                text = new_text
    except BaseException:
        engine.abort_request(request_id)
        raise
    return text
