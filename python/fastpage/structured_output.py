"""Structured outputs, engine side: a request's StructuredOutputsParams checked with xgrammar (a
ValueError naming the field before the request is queued), turned into the C++ engine's
StructuredOutput, and the xgrammar compiler the engine loop compiles with (off the loop, cached by
xgrammar per grammar) and fills its bitmasks from."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import TYPE_CHECKING, Any

from fastpage.sampling_params import MAX_GRAMMAR_CHARS, StructuredOutputsParams

if TYPE_CHECKING:
    from fastpage import _C
    from fastpage.tokenizer import Tokenizer

BACKENDS = ("auto", "xgrammar")  # "auto" is xgrammar: the only backend
# xgrammar prefixes its messages with "[hh:mm:ss] /path/file.cc:line: "; the rest is for the user.
_XGRAMMAR_LOCATION = re.compile(r"^\[[0-9:]+\] [^ ]+:\d+: ")


@dataclasses.dataclass
class StructuredOutputsConfig:
    """`--structured-outputs-config` (vLLM's name and JSON form)."""
    backend: str = "auto"
    disable_any_whitespace: bool = False  # the default for requests that do not say
    compile_timeout_s: float = 30.0  # a grammar not compiled by then fails its request
    compile_threads: int = 2
    # xgrammar's cache of compiled grammars, keyed by grammar text and options.
    cache_limit_bytes: int = 512 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"structured_outputs_config.backend must be one of {', '.join(BACKENDS)}, got "
                             f"{self.backend!r} (llguidance and outlines are not available).")
        if not isinstance(self.disable_any_whitespace, bool):
            raise ValueError("structured_outputs_config.disable_any_whitespace must be a bool.")
        if not (isinstance(self.compile_timeout_s, (int, float)) and self.compile_timeout_s > 0):
            raise ValueError("structured_outputs_config.compile_timeout_s must be a positive number.")
        for name in ("compile_threads", "cache_limit_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"structured_outputs_config.{name} must be a positive integer.")

    def any_whitespace(self, params: StructuredOutputsParams) -> bool:
        """Whether the request's JSON may have any whitespace between tokens."""
        return not (params.disable_any_whitespace or self.disable_any_whitespace)

    @classmethod
    def from_json(cls, text: str | dict | None) -> StructuredOutputsConfig:
        if text is None:
            return cls()
        try:
            fields = json.loads(text) if isinstance(text, str) else dict(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"structured_outputs_config must be a JSON object: {err}") from None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"structured_outputs_config: unknown field(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}.")
        return cls(**fields)


def _grammar_text(params: StructuredOutputsParams) -> tuple[str, str]:
    """(kind, text) with kind one of the C++ GrammarKind names; choices become an EBNF grammar."""
    kind = params.kind
    if kind == "json":
        text = params.json if isinstance(params.json, str) else json.dumps(params.json)
        return "JsonSchema", text
    if kind == "json_object":
        return "JsonObject", ""
    if kind == "regex":
        return "Regex", params.regex
    if kind == "choice":
        # JSON string literals are valid EBNF string literals (same escapes).
        return "Ebnf", "root ::= " + " | ".join(json.dumps(choice, ensure_ascii=False) for choice in params.choice)
    if kind == "grammar":
        return "Ebnf", params.grammar
    return "StructuralTag", params.structural_tag


def _xgrammar_message(err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return _XGRAMMAR_LOCATION.sub("", first)


def check(params: StructuredOutputsParams, any_whitespace: bool) -> None:
    """ValueError naming the field when xgrammar cannot parse the grammar (the token masks are built
    later, off the engine loop). Once per params and whitespace setting (the server checks first, to
    name its own field, then the engine)."""
    import xgrammar as xgr

    if getattr(params, "_checked_any_whitespace", None) == any_whitespace:
        return
    kind, text = _grammar_text(params)
    field = f"structured_outputs.{params.kind}"
    if len(text) > MAX_GRAMMAR_CHARS:
        raise ValueError(f"{field}: the grammar has {len(text)} characters, more than the limit "
                         f"({MAX_GRAMMAR_CHARS}).")
    try:
        if kind == "JsonSchema":
            schema = json.loads(text)
            if not isinstance(schema, (dict, bool)):
                raise ValueError("a JSON schema is an object (or true/false)")
            xgr.Grammar.from_json_schema(text, any_whitespace=any_whitespace, strict_mode=True)
        elif kind == "Regex":
            xgr.Grammar.from_regex(text)
        elif kind == "Ebnf":
            xgr.Grammar.from_ebnf(text)
        elif kind == "StructuralTag":
            xgr.Grammar.from_structural_tag(text)
    except (ValueError, RuntimeError, TypeError, RecursionError) as err:
        raise ValueError(f"{field}: invalid {params.kind}: {_xgrammar_message(err)}") from None
    params._checked_any_whitespace = any_whitespace


def to_c(params: StructuredOutputsParams, any_whitespace: bool, start_after: list[int] | None = None
         ) -> _C.StructuredOutput:
    from fastpage import _C

    kind, text = _grammar_text(params)
    output = _C.StructuredOutput()
    output.kind = getattr(_C.GrammarKind, kind)
    output.spec = text
    output.any_whitespace = any_whitespace
    output.start_after = list(start_after or [])
    return output


def attach_xgrammar(loop, tokenizer: Tokenizer, vocab_size: int, config: StructuredOutputsConfig) -> Any:
    """Builds the xgrammar compiler for the model's vocabulary (its stop tokens: the eos ids) and hands
    it to the C++ engine loop. Returns the compiler (the loop holds a reference of its own)."""
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer.hf, vocab_size=vocab_size,
                                              stop_token_ids=list(tokenizer.eos_token_ids) or None)
    threads = max(1, min(8, (os.cpu_count() or 1) // 2))
    compiler = xgr.GrammarCompiler(info, max_threads=threads, cache_enabled=True,
                                   cache_limit_bytes=config.cache_limit_bytes)
    loop.set_grammar_backend(compiler._handle.__chandle__(), vocab_size=info.vocab_size,
                             compile_threads=config.compile_threads,
                             compile_timeout_s=float(config.compile_timeout_s), fill_threads=threads)
    return compiler
