"""A request's structured-output fields -> StructuredOutputsParams: OpenAI's response_format, vLLM's
structured_outputs object and its older guided_* fields. At most one may constrain the output; an error
names the field it came from (OpenAI-shaped 400)."""

from __future__ import annotations

import dataclasses

from fastpage.sampling_params import StructuredOutputsParams
from fastpage.server.errors import OpenAIError
from fastpage.server.protocol import SamplingFields

# guided_* field -> StructuredOutputsParams field
_GUIDED_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                  "guided_grammar": "grammar"}
_BACKENDS = ("auto", "xgrammar")


def structured_outputs_from(req: SamplingFields) -> tuple[StructuredOutputsParams | None, str | None]:
    """(the constraint, the request field it came from), or (None, None)."""
    if req.guided_decoding_backend is not None and req.guided_decoding_backend not in _BACKENDS:
        raise OpenAIError(f"guided_decoding_backend must be one of {', '.join(_BACKENDS)}, got "
                          f"{req.guided_decoding_backend!r}", 400, "guided_decoding_backend")
    sources: list[tuple[str, dict]] = []
    if req.response_format is not None and req.response_format.type == "json_object":
        sources.append(("response_format", {"json_object": True}))
    elif req.response_format is not None and req.response_format.type == "json_schema":
        sources.append(("response_format", {"json": req.response_format.json_schema.schema_}))
    if req.structured_outputs is not None:
        sources.append(("structured_outputs", dict(req.structured_outputs)))
    for field, target in _GUIDED_FIELDS.items():
        if getattr(req, field) is not None:
            values = {target: getattr(req, field)}
            if req.guided_whitespace_pattern is not None:
                values["whitespace_pattern"] = req.guided_whitespace_pattern
            sources.append((field, values))
    if not sources:
        return None, None
    if len(sources) > 1:
        names = [field for field, _ in sources]
        raise OpenAIError(f"give one structured-output constraint, got {', '.join(names)}", 400, names[1])
    field, values = sources[0]
    known = {f.name for f in dataclasses.fields(StructuredOutputsParams)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise OpenAIError(f"{field}: unknown field(s) {', '.join(unknown)}", 400, field)
    try:
        return StructuredOutputsParams(**values), field
    except ValueError as err:
        raise OpenAIError(str(err).replace("structured_outputs", field, 1), 400, field) from None
