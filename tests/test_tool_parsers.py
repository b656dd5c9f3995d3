"""Tool-call parsers on model-shaped text, whole and streamed piece by piece."""

import json

import pytest

from fastpage.server.tool_parsers import TOOL_PARSERS

WEATHER = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
TIME = {"name": "get_time", "arguments": {"tz": "Europe/Paris", "nested": {"a": [1, 2, {"b": "}"}]}}}


def hermes(*calls, before=""):
    return before + "".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>\n" for c in calls)


def mistral_v3(*calls, before=""):
    return before + "[TOOL_CALLS]" + json.dumps(list(calls))


def mistral_v11(*calls, before=""):
    return before + "".join(f"[TOOL_CALLS]{c['name']}[ARGS]{json.dumps(c['arguments'])}" for c in calls)


def llama3(*calls, before=""):
    return before + "; ".join(json.dumps({"name": c["name"], "parameters": c["arguments"]}) for c in calls)


def expected(calls):
    return [(c["name"], c["arguments"]) for c in calls]


def stream(parser_name, text, piece_sizes=(1, 2, 3, 5)):
    """Feeds text in varying small pieces, as tokens arrive; returns (content, [(name, args)])."""
    parser = TOOL_PARSERS[parser_name]()
    content, calls, pos, i = "", {}, 0, 0
    deltas = []
    while pos < len(text):
        pos = min(len(text), pos + piece_sizes[i % len(piece_sizes)])
        i += 1
        deltas.append(parser.extract_tool_calls_streaming(text[:pos]))
    deltas.append(parser.finish_streaming(text))
    for delta in filter(None, deltas):
        content += delta.content or ""
        for tc in delta.tool_calls:
            assert tc.index not in calls, "each tool call is sent once"
            assert tc.id and tc.type == "function"
            calls[tc.index] = (tc.function.name, json.loads(tc.function.arguments))
    return content, [calls[k] for k in sorted(calls)]


def whole(parser_name, text):
    result = TOOL_PARSERS[parser_name]().extract_tool_calls(text)
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in result.tool_calls]
    assert result.tools_called == bool(calls)
    assert all(c.id and c.type == "function" for c in result.tool_calls)
    return result.content or "", calls


FORMATS = [("hermes", hermes), ("mistral", mistral_v3), ("mistral", mistral_v11),
           ("llama3_json", llama3)]


@pytest.mark.parametrize("parser_name,fmt", FORMATS)
@pytest.mark.parametrize("calls", [[WEATHER], [WEATHER, TIME]])
def test_tool_calls_whole_and_streamed(parser_name, fmt, calls):
    before = "" if parser_name == "llama3_json" else "Let me check that for you.\n"
    text = fmt(*calls, before=before)
    assert whole(parser_name, text) == (before, expected(calls))
    assert stream(parser_name, text) == (before, expected(calls))


@pytest.mark.parametrize("parser_name", sorted(TOOL_PARSERS))
@pytest.mark.parametrize("text", [
    "The weather in Paris is sunny, 21 degrees.",
    "Some <tool_ and [TOOL and <|python brackets that look like markers but are not",
    "",
])
def test_plain_text_is_content(parser_name, text):
    assert whole(parser_name, text) == (text, [])
    assert stream(parser_name, text) == (text, [])


@pytest.mark.parametrize("parser_name,text", [
    ("hermes", "Sure.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Par"),
    ("hermes", "<tool_call>{not json}</tool_call>"),
    ("mistral", "[TOOL_CALLS][{\"name\": \"get_weather\", \"argum"),
    ("llama3_json", "{\"name\": \"get_weather\", \"parameters\": {\"city\""),
    ("llama3_json", "{\"answer\": 42}"),
])
def test_broken_or_truncated_tool_call_is_returned_as_content(parser_name, text):
    assert whole(parser_name, text) == (text, [])
    assert stream(parser_name, text) == (text, [])


def test_hermes_arguments_given_as_string_are_kept():
    text = '<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>'
    result = TOOL_PARSERS["hermes"]().extract_tool_calls(text)
    assert result.tool_calls[0].function.arguments == '{"x": 1}'


def test_mistral_ids_fit_its_chat_template():
    result = TOOL_PARSERS["mistral"]().extract_tool_calls(mistral_v3(WEATHER))
    call_id = result.tool_calls[0].id
    assert len(call_id) == 9 and call_id.isalnum()


@pytest.mark.parametrize("parser_name,opener", [("hermes", "<tool_call>"), ("mistral", "[TOOL_CALLS]["),
                                                ("llama3_json", "{")])
def test_adversarial_text_parses_in_linear_time(parser_name, opener):
    # Deeply nested / unterminated input of user size: parsing must not blow up (no regex backtracking).
    text = opener + '{"name": "f", "arguments": ' + "[" * 5000 + '"' + "a" * 200_000
    assert whole(parser_name, text) == (text, [])
    assert stream(parser_name, text, piece_sizes=(50_000,)) == (text, [])


@pytest.mark.parametrize("parser_name,fmt", FORMATS)
def test_streaming_decodes_a_pending_call_only_when_a_bracket_arrives(parser_name, fmt, monkeypatch):
    # A long tool call streamed a character at a time: the pending call's JSON is decoded again only
    # after a piece that brings a closing bracket (the only way a JSON value can complete), so the
    # work per piece does not grow with the text so far.
    from fastpage.server.tool_parsers import base

    long_call = {"name": "write_file", "arguments": {"path": "a.txt", "text": "x" * 5000}}
    text = fmt(long_call, before="" if parser_name == "llama3_json" else "Writing it.\n")
    decodes = []
    real_decoder = base._decoder

    class CountingDecoder:
        def raw_decode(self, s, pos):
            decodes.append(pos)
            return real_decoder.raw_decode(s, pos)

    monkeypatch.setattr(base, "_decoder", CountingDecoder())
    content, calls = stream(parser_name, text, piece_sizes=(1,))
    assert calls == expected([long_call])
    assert len(decodes) <= 4 * sum(text.count(c) for c in "}]")  # not one per piece (len(text) ~ 5,100)
