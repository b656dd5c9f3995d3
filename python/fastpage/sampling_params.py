"""SamplingParams: vLLM's fields, defaults and validation; converted to the C++ engine's params.

Validation happens in two steps: `__post_init__` checks what the parameters alone decide, and
`verify_for_model` checks what depends on the model and the engine (vocabulary, max_logprobs,
max_num_seqs). Every error is a ValueError whose message starts with the offending field's name.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastpage import _C
    from fastpage.tokenizer import Tokenizer

SAMPLING_EPS = 1e-5  # temperatures below this mean greedy (vLLM's _SAMPLING_EPS)
MAX_STOP_STRINGS = 64
MAX_STOP_STRING_CHARS = 1024
MAX_BAD_WORDS = 64
MAX_BAD_WORD_CHARS = 1024
LOGIT_BIAS_LIMIT = 100.0  # OpenAI's range; larger values are clamped, as in vLLM
MAX_SEED = 2**64  # the C++ engine keeps seeds as uint64; negative seeds wrap around


MAX_GRAMMAR_CHARS = 256 * 1024  # a schema, regex or grammar; compile time grows with it
MAX_CHOICES = 1024


@dataclasses.dataclass
class StructuredOutputsParams:
    """The output must follow exactly one of: a JSON schema (`json`, a dict or its JSON text), any JSON
    object (`json_object=True`), a regular expression (`regex`), one of given strings (`choice`), an
    EBNF grammar with a `root` rule (`grammar`, xgrammar's / llama.cpp's GBNF dialect) or a structural
    tag (`structural_tag`, JSON text). vLLM's names. Enforced while sampling, at any temperature."""
    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | None = None
    # JSON: only single spaces where the schema's layout has whitespace (no free-form whitespace).
    disable_any_whitespace: bool = False
    # Objects hold only the listed properties unless the schema allows more (xgrammar's strict mode,
    # vLLM's behaviour either way); accepted for vLLM compatibility.
    disable_additional_properties: bool = False
    # One backend (xgrammar) and no fallback between backends: accepted for vLLM compatibility.
    disable_fallback: bool = False
    whitespace_pattern: str | None = None  # not supported by xgrammar: an error when set

    CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")

    def __post_init__(self) -> None:
        given = [name for name in self.CONSTRAINTS if getattr(self, name) not in (None, False)]
        if len(given) != 1:
            raise ValueError("structured_outputs: give exactly one of json, regex, choice, grammar, json_object "
                             f"or structural_tag; got {given or 'none'}.")
        if self.json is not None and not isinstance(self.json, (str, dict)):
            raise ValueError(f"structured_outputs.json must be a JSON schema (dict or JSON text), got "
                             f"{type(self.json).__name__}.")
        for name in ("regex", "grammar", "structural_tag"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"structured_outputs.{name} must be a non-empty string, got {value!r}.")
        if self.choice is not None:
            if (not isinstance(self.choice, (list, tuple)) or not self.choice or len(self.choice) > MAX_CHOICES
                    or not all(isinstance(c, str) and c for c in self.choice)):
                raise ValueError("structured_outputs.choice must be a list of 1 to "
                                 f"{MAX_CHOICES} non-empty strings, got {self.choice!r}.")
            self.choice = list(self.choice)
        if self.json_object is not None and not isinstance(self.json_object, bool):
            raise ValueError(f"structured_outputs.json_object must be a bool, got {self.json_object!r}.")
        for name in ("disable_any_whitespace", "disable_additional_properties", "disable_fallback"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"structured_outputs.{name} must be a bool, got {getattr(self, name)!r}.")
        if self.whitespace_pattern is not None:
            raise ValueError("structured_outputs.whitespace_pattern is not supported by the xgrammar backend; "
                             "use disable_any_whitespace.")

    @property
    def kind(self) -> str:
        return next(name for name in self.CONSTRAINTS if getattr(self, name) not in (None, False))


# vLLM's earlier name (SamplingParams(guided_decoding=GuidedDecodingParams(...))).
GuidedDecodingParams = StructuredOutputsParams


class RequestOutputKind(enum.Enum):
    """When and what LLMEngine.step reports of a request (vLLM's names and values)."""
    CUMULATIVE = 0  # every step it progressed in, with everything generated so far
    DELTA = 1  # every step it progressed in, with only what is new (streams)
    FINAL_ONLY = 2  # once, when it finishes (LLM.generate, non-streamed responses)


@dataclasses.dataclass
class SamplingParams:
    n: int = 1
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16  # None: up to the end of the context
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    structured_outputs: StructuredOutputsParams | None = None
    guided_decoding: StructuredOutputsParams | None = None  # vLLM's earlier name for structured_outputs

    def __post_init__(self) -> None:
        if self.guided_decoding is not None:
            if self.structured_outputs is not None:
                raise ValueError("guided_decoding is the older name of structured_outputs: give one of them.")
            self.structured_outputs, self.guided_decoding = self.guided_decoding, None
        if isinstance(self.structured_outputs, dict):
            self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
        if self.best_of is None:
            self.best_of = self.n
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = [] if self.stop_token_ids is None else list(self.stop_token_ids)
        self.bad_words = [] if self.bad_words is None else list(self.bad_words)
        if self.logit_bias is not None:
            self.logit_bias = _normalize_logit_bias(self.logit_bias)
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = list(self.allowed_token_ids)
        self._verify()
        if self.temperature < SAMPLING_EPS:
            # Greedy: the truncation knobs cannot change the argmax, so they are switched off.
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0

    @property
    def sampling_type_greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS

    def clone(self) -> SamplingParams:
        return dataclasses.replace(self)

    # ------------------------------------------------------------------ validation
    def _verify(self) -> None:
        _check_int("n", self.n, minimum=1)
        _check_int("best_of", self.best_of, minimum=1)
        if self.best_of < self.n:
            raise ValueError(f"best_of must be greater than or equal to n, got n={self.n} and "
                             f"best_of={self.best_of}.")
        _check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        if not _is_number(self.repetition_penalty) or not 0.0 < self.repetition_penalty < math.inf:
            raise ValueError(f"repetition_penalty must be greater than zero, got {self.repetition_penalty}.")
        if not _is_number(self.temperature) or not 0.0 <= self.temperature < math.inf:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")
        if not _is_number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        _check_int("top_k", self.top_k, minimum=-1)
        _check_range("min_p", self.min_p, 0.0, 1.0)
        if self.seed is not None:
            _check_int("seed", self.seed, minimum=-MAX_SEED + 1)
            if self.seed >= MAX_SEED:
                raise ValueError(f"seed must be less than 2**64, got {self.seed}.")
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, minimum=1)
        _check_int("min_tokens", self.min_tokens, minimum=0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, "
                             f"got {self.min_tokens}.")
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, minimum=0)
        if self.prompt_logprobs is not None:
            _check_int("prompt_logprobs", self.prompt_logprobs, minimum=0)
        _check_strings("stop", self.stop, MAX_STOP_STRINGS, MAX_STOP_STRING_CHARS)
        if self.stop and not self.detokenize:
            raise ValueError("stop strings are only supported when detokenize is True; "
                             "use stop_token_ids instead.")
        _check_strings("bad_words", self.bad_words, MAX_BAD_WORDS, MAX_BAD_WORD_CHARS)
        for token_id in self.stop_token_ids:
            _check_int("stop_token_ids", token_id, minimum=0)
        if self.allowed_token_ids is not None:
            if not self.allowed_token_ids:
                raise ValueError("allowed_token_ids must not be empty when given.")
            for token_id in self.allowed_token_ids:
                _check_int("allowed_token_ids", token_id, minimum=0)
        if self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputsParams):
            raise ValueError("structured_outputs must be a StructuredOutputsParams, got "
                             f"{type(self.structured_outputs).__name__}.")
        if not isinstance(self.output_kind, RequestOutputKind):
            raise ValueError(f"output_kind must be a RequestOutputKind, got {self.output_kind!r}.")
        for name in ("ignore_eos", "detokenize", "skip_special_tokens", "spaces_between_special_tokens",
                     "include_stop_str_in_output"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}.")

    def verify_for_model(self, vocab_size: int, max_logprobs: int, max_num_seqs: int | None = None) -> None:
        """Checks the bounds that depend on the model and the engine."""
        for name, value in (("logprobs", self.logprobs), ("prompt_logprobs", self.prompt_logprobs)):
            if value is not None and value > max_logprobs:
                raise ValueError(f"{name}: requested {value} logprobs, which is greater than the "
                                 f"maximum allowed ({max_logprobs}).")
        if max_num_seqs is not None and self.best_of > max_num_seqs:
            raise ValueError(f"best_of ({self.best_of}) must not exceed max_num_seqs ({max_num_seqs}).")
        for name, ids in (("stop_token_ids", self.stop_token_ids),
                          ("allowed_token_ids", self.allowed_token_ids or []),
                          ("logit_bias", list(self.logit_bias or {}))):
            if len(ids) > vocab_size:
                raise ValueError(f"{name} has {len(ids)} entries, more than the vocabulary ({vocab_size}).")
            bad = [token_id for token_id in ids if token_id >= vocab_size]
            if bad:
                raise ValueError(f"{name} contains token id {bad[0]}, outside the vocabulary "
                                 f"(size {vocab_size}).")

    # ------------------------------------------------------------------ conversion
    def bad_words_token_ids(self, tokenizer: Tokenizer) -> list[list[int]]:
        """Each bad word as token ids, both as written and with a leading space (a new word),
        as vLLM does; the second form only when it tokenizes differently."""
        sequences: list[list[int]] = []
        for word in self.bad_words:
            for text in (word.lstrip(), " " + word.lstrip()):
                token_ids = tokenizer.encode(text, add_special_tokens=False)
                if token_ids and token_ids not in sequences:
                    sequences.append(token_ids)
        return sequences

    def to_c_params(self, max_tokens: int, bad_words_token_ids: list[list[int]] | None = None,
                    structured_output: _C.StructuredOutput | None = None) -> _C.CSamplingParams:
        """The C++ engine's view; `max_tokens` is the effective limit (None resolved by the caller),
        `structured_output` the grammar of structured_outputs (fastpage.structured_output.to_c)."""
        from fastpage import _C

        params = _C.CSamplingParams()
        params.n = self.n
        params.best_of = self.best_of
        params.temperature = 0.0 if self.sampling_type_greedy else float(self.temperature)
        params.top_p = float(self.top_p)
        params.top_k = max(self.top_k, 0)
        params.min_p = float(self.min_p)
        params.seed = None if self.seed is None else self.seed % MAX_SEED
        params.presence_penalty = float(self.presence_penalty)
        params.frequency_penalty = float(self.frequency_penalty)
        params.repetition_penalty = float(self.repetition_penalty)
        params.stop_token_ids = list(self.stop_token_ids)
        params.bad_words = list(bad_words_token_ids or [])
        params.ignore_eos = self.ignore_eos
        params.max_tokens = max_tokens
        params.min_tokens = self.min_tokens
        params.logprobs = self.logprobs
        params.prompt_logprobs = self.prompt_logprobs
        params.logit_bias = dict(self.logit_bias or {})
        params.allowed_token_ids = list(self.allowed_token_ids or [])
        if structured_output is not None:
            params.structured_output = structured_output
        return params


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}.")


def _check_range(name: str, value: Any, low: float, high: float) -> None:
    if not _is_number(value) or not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}.")


def _check_strings(name: str, values: list, max_count: int, max_chars: int) -> None:
    if len(values) > max_count:
        raise ValueError(f"{name} may have at most {max_count} entries, got {len(values)}.")
    for value in values:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} entries must be non-empty strings, got {value!r}.")
        if len(value) > max_chars:
            raise ValueError(f"{name} entries may have at most {max_chars} characters, got {len(value)}.")


def _normalize_logit_bias(logit_bias: dict) -> dict[int, float]:
    """Keys may arrive as strings (JSON); values are clamped to [-100, 100] like vLLM and OpenAI."""
    if not isinstance(logit_bias, dict):
        raise ValueError(f"logit_bias must be a dict of token id -> bias, got {type(logit_bias).__name__}.")
    normalized: dict[int, float] = {}
    for key, bias in logit_bias.items():
        try:
            token_id = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"logit_bias keys must be token ids, got {key!r}.") from None
        if token_id < 0 or (isinstance(key, float) and key != token_id):
            raise ValueError(f"logit_bias keys must be non-negative token ids, got {key!r}.")
        if not _is_number(bias) or not math.isfinite(bias):
            raise ValueError(f"logit_bias values must be finite numbers, got {bias!r}.")
        normalized[token_id] = max(-LOGIT_BIAS_LIMIT, min(LOGIT_BIAS_LIMIT, float(bias)))
    return normalized
