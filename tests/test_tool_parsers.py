"""Tool-call parsers on model-shaped text, whole and streamed piece by piece."""

import argparse
import json

import pytest

from fastpage.server.protocol import ChatTool
from fastpage.server.tool_parsers import TOOL_PARSERS

WEATHER = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
TIME = {"name": "get_time", "arguments": {"tz": "Europe/Paris", "nested": {"a": [1, 2, {"b": "}"}]}}}
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}}}}}


def hermes(*calls, before=""):
    return before + "".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>\n" for c in calls)


def mistral_v3(*calls, before=""):
    return before + "[TOOL_CALLS]" + json.dumps(list(calls))


def mistral_v11(*calls, before=""):
    return before + "".join(f"[TOOL_CALLS]{c['name']}[ARGS]{json.dumps(c['arguments'])}" for c in calls)


def llama3(*calls, before=""):
    return before + "; ".join(json.dumps({"name": c["name"], "parameters": c["arguments"]}) for c in calls)


def pythonic(*calls, before=""):
    # repr() writes a JSON value as the Python literal a model would (True, None, {'a': [1]}).
    return before + "[" + ", ".join(
        c["name"] + "(" + ", ".join(f"{k}={v!r}" for k, v in c["arguments"].items()) + ")" for c in calls) + "]"


def qwen3_coder(*calls, before=""):
    def value(v):
        return v if isinstance(v, str) else json.dumps(v)

    return before + "".join(
        f"<tool_call>\n<function={c['name']}>\n"
        + "".join(f"<parameter={k}>\n{value(v)}\n</parameter>\n" for k, v in c["arguments"].items())
        + "</function>\n</tool_call>\n" for c in calls)


DEEPSEEK_CALLS_BEGIN, DEEPSEEK_CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DEEPSEEK_CALL_BEGIN, DEEPSEEK_CALL_END = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>"
DEEPSEEK_SEP = "<｜tool▁sep｜>"


def deepseek_v3(*calls, before=""):
    return before + DEEPSEEK_CALLS_BEGIN + "\n".join(
        f"{DEEPSEEK_CALL_BEGIN}function{DEEPSEEK_SEP}{c['name']}\n```json\n{json.dumps(c['arguments'])}\n```"
        f"{DEEPSEEK_CALL_END}" for c in calls) + DEEPSEEK_CALLS_END


def granite(*calls, before="", marker="<|tool_call|>"):
    return before + marker + json.dumps(list(calls))


def granite_3_1(*calls, before=""):
    return granite(*calls, before=before, marker="<tool_call>")


def granite_bare(*calls, before=""):
    return granite(*calls, before=before, marker="")


def internlm(*calls, before=""):
    return before + "".join(
        f"<|action_start|><|plugin|>\n{json.dumps({'name': c['name'], 'parameters': c['arguments']})}"
        "<|action_end|>\n" for c in calls)


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
           ("llama3_json", llama3), ("pythonic", pythonic), ("qwen3_coder", qwen3_coder),
           ("deepseek_v3", deepseek_v3), ("granite", granite), ("granite", granite_3_1),
           ("granite", granite_bare), ("internlm", internlm)]
# Formats whose calls must open the reply: text before them makes the whole reply content.
REPLY_STARTS_WITH_CALLS = {llama3, pythonic, granite_bare}


def before_calls(fmt):
    return "" if fmt in REPLY_STARTS_WITH_CALLS else "Let me check that for you.\n"


@pytest.mark.parametrize("parser_name,fmt", FORMATS)
@pytest.mark.parametrize("calls", [[WEATHER], [WEATHER, TIME]])
def test_tool_calls_whole_and_streamed(parser_name, fmt, calls):
    before = before_calls(fmt)
    text = fmt(*calls, before=before)
    assert whole(parser_name, text) == (before, expected(calls))
    assert stream(parser_name, text) == (before, expected(calls))


@pytest.mark.parametrize("parser_name,fmt", [(p, f) for p, f in FORMATS if f in REPLY_STARTS_WITH_CALLS])
def test_calls_after_text_are_content_where_calls_must_open_the_reply(parser_name, fmt):
    text = fmt(WEATHER, before="Sure, here it is: ")
    assert whole(parser_name, text) == (text, [])
    assert stream(parser_name, text) == (text, [])


@pytest.mark.parametrize("parser_name", sorted(TOOL_PARSERS))
@pytest.mark.parametrize("text", [
    "The weather in Paris is sunny, 21 degrees.",
    "Some <tool_ and [TOOL and <|python brackets that look like markers but are not",
    "Calls look like f(x=1) or <function=f> or <|action_start|><|interpreter|>\nprint(1)<|action_end|>",
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
    ("pythonic", "[get_weather(city='Par"),
    ("pythonic", "[1, 2, 3] are the first numbers"),
    ("pythonic", "[get_weather(city=Paris)]"),  # not a literal: nothing is evaluated
    ("pythonic", "[get_weather('Paris')]"),  # positional arguments have no name
    ("pythonic", "[get_weather(city={1, 2})]"),  # a set has no JSON form
    ("pythonic", "[get_weather(city='Paris']"),
    ("pythonic", "[]"),
    ("qwen3_coder", "Sure.<tool_call>\n<function=get_weather>\n<parameter=city>\nPar"),
    ("qwen3_coder", "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</function>\n</tool_call>"),
    ("qwen3_coder", "<tool_call>\n<function=>\n</function>\n</tool_call>"),
    ("deepseek_v3", DEEPSEEK_CALLS_BEGIN + DEEPSEEK_CALL_BEGIN + "function" + DEEPSEEK_SEP
     + "get_weather\n```json\n{\"city\": \"Par"),
    ("deepseek_v3", DEEPSEEK_CALLS_BEGIN + DEEPSEEK_CALL_BEGIN + "function" + DEEPSEEK_SEP
     + "get_weather\n```json\n{\"city\": \"Paris\"}\n```"),  # no call end yet
    ("deepseek_v3", DEEPSEEK_CALLS_BEGIN + DEEPSEEK_CALL_BEGIN + "function" + DEEPSEEK_SEP
     + "get_weather\n```json\n{not json}\n```" + DEEPSEEK_CALL_END + DEEPSEEK_CALLS_END),
    ("granite", "<|tool_call|>[{\"name\": \"get_weather\", \"argum"),
    ("granite", "<|tool_call|>{\"name\": \"get_weather\", \"arguments\": {}}"),  # not a list
    ("granite", "[1, 2] are numbers"),
    ("internlm", "Sure.<|action_start|><|plugin|>\n{\"name\": \"get_weather\", \"parameters\": {\"ci"),
    ("internlm", "<|action_start|><|plugin|>\n{not json}<|action_end|>"),
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


@pytest.mark.parametrize("parser_name,opener", [
    ("hermes", "<tool_call>"), ("mistral", "[TOOL_CALLS]["), ("llama3_json", "{"), ("pythonic", "[f(x="),
    ("qwen3_coder", "<tool_call>\n<function=f>\n<parameter=x>\n"), ("granite", "<|tool_call|>["),
    ("deepseek_v3", DEEPSEEK_CALLS_BEGIN + DEEPSEEK_CALL_BEGIN + "function" + DEEPSEEK_SEP + "f\n```json\n"),
    ("internlm", "<|action_start|><|plugin|>\n"),
])
def test_adversarial_text_parses_in_linear_time(parser_name, opener):
    # Deeply nested / unterminated input of user size: parsing must not blow up (no regex backtracking).
    text = opener + '{"name": "f", "arguments": ' + "[" * 5000 + '"' + "a" * 200_000
    assert whole(parser_name, text) == (text, [])
    assert stream(parser_name, text, piece_sizes=(50_000,)) == (text, [])


LONG_CALL = {"name": "write_file", "arguments": {"path": "a.txt", "text": "x" * 5000}}


@pytest.mark.parametrize("parser_name,fmt", FORMATS)
def test_streaming_decodes_a_pending_call_only_when_a_bracket_arrives(parser_name, fmt, monkeypatch):
    # A long tool call streamed a character at a time: the pending call's JSON is decoded again only
    # after a piece that brings one of the format's closing characters (for JSON, a closing bracket:
    # the only way a JSON value can complete), so the work per piece does not grow with the text so far.
    from fastpage.server.tool_parsers import base

    text = fmt(LONG_CALL, before=before_calls(fmt))
    decodes = []
    real_decoder = base._decoder

    class CountingDecoder:
        def raw_decode(self, s, pos):
            decodes.append(pos)
            return real_decoder.raw_decode(s, pos)

    monkeypatch.setattr(base, "_decoder", CountingDecoder())
    content, calls = stream(parser_name, text, piece_sizes=(1,))
    assert calls == expected([LONG_CALL])
    closing_chars = TOOL_PARSERS[parser_name].closing_chars
    assert len(decodes) <= 4 * sum(text.count(c) for c in closing_chars)  # not one per piece (len(text) ~ 5,100)


@pytest.mark.parametrize("parser_name,fmt", FORMATS)
def test_streaming_scans_a_pending_call_only_when_a_closing_character_arrives(parser_name, fmt, monkeypatch):
    # The same for every format, JSON or not (pythonic and qwen3_coder parse no JSON while scanning):
    # one scan per piece that brings a closing character, none for the others.
    parser_class = TOOL_PARSERS[parser_name]
    scans = []
    real_scan = parser_class.scan_calls

    def counting_scan(self, text, pos, first):
        scans.append(pos)
        return real_scan(self, text, pos, first)

    monkeypatch.setattr(parser_class, "scan_calls", counting_scan)
    text = fmt(LONG_CALL, before=before_calls(fmt))
    content, calls = stream(parser_name, text, piece_sizes=(1,))
    assert calls == expected([LONG_CALL])
    assert len(scans) <= sum(text.count(c) for c in parser_class.closing_chars)


def test_every_parser_takes_the_requests_tools():
    tools = [ChatTool.model_validate(WEATHER_TOOL)]
    for parser_class in TOOL_PARSERS.values():
        assert parser_class(tools).tools == tools


def test_pythonic_arguments_are_python_literals_as_json():
    text = ("[run(code=\"print(\\\"a)]\\\")\", quoted='''it's \"q\" ]''', flag=True, none=None, ratio=1.5, "
            "pair=(1, 2), nested={'k': [1, {'x': ')'}]}), stop()]")
    expected_calls = [("run", {"code": 'print("a)]")', "quoted": 'it\'s "q" ]', "flag": True, "none": None,
                               "ratio": 1.5, "pair": [1, 2], "nested": {"k": [1, {"x": ")"}]}}), ("stop", {})]
    assert whole("pythonic", text) == ("", expected_calls)
    assert stream("pythonic", text) == ("", expected_calls)


@pytest.mark.parametrize("text", [
    "[f(x=" + "(" * 5000 + ")" * 5000 + ")]",  # deeper than Python's parser allows
    "[f(x=1e999)]",  # infinity has no JSON form
    "[f(**{'x': 1})]",
    "[os.system(command='ls')]",  # only plain function names
])
def test_pythonic_refuses_what_is_not_a_plain_call_with_literal_arguments(text):
    assert whole("pythonic", text) == (text, [])
    assert stream("pythonic", text) == (text, [])


def test_pythonic_streaming_walks_a_pending_call_once(monkeypatch):
    # Closing brackets arriving one at a time (nested arguments) resume the walk over the pending call
    # where it stopped, instead of walking it again from its start for each of them.
    from fastpage.server.tool_parsers import pythonic as module

    walks_from_the_start = []
    real_open_parenthesis = module._open_parenthesis

    def counting(text, at):
        walks_from_the_start.append(at)
        return real_open_parenthesis(text, at)

    monkeypatch.setattr(module, "_open_parenthesis", counting)
    text = "[f(x=[" + "[], " * 2000 + "[]])]"
    assert stream("pythonic", text, piece_sizes=(1,)) == ("", [("f", {"x": [[]] * 2001})])
    assert len(walks_from_the_start) <= 2


SETTINGS_TOOL = {"type": "function", "function": {"name": "configure", "parameters": {
    "type": "object", "properties": {
        "zip_code": {"type": "string"}, "retries": {"type": "integer"}, "ratio": {"type": "number"},
        "verbose": {"type": "boolean"}, "options": {"type": "object"}, "ids": {"type": "array"},
        "limit": {"type": ["integer", "null"]}, "count": {"type": "integer"}, "anything": {}}}}}
SETTINGS_CALL = "<tool_call>\n<function=configure>\n" + "".join(
    f"<parameter={key}>\n{value}\n</parameter>\n" for key, value in [
        ("zip_code", "75001"), ("retries", "3"), ("ratio", "0.5"), ("verbose", "True"), ("options", '{"a": 1}'),
        ("ids", "[1, 2]"), ("limit", "null"), ("count", "three"), ("anything", "7"), ("script", "NaN"),
        ("code", "def f():\n    return 1\n")]) + "</function>\n</tool_call>"


def test_qwen3_coder_types_values_with_the_tools_schema():
    result = TOOL_PARSERS["qwen3_coder"]([ChatTool.model_validate(SETTINGS_TOOL)]).extract_tool_calls(SETTINGS_CALL)
    assert json.loads(result.tool_calls[0].function.arguments) == {
        "zip_code": "75001", "retries": 3, "ratio": 0.5, "verbose": True, "options": {"a": 1}, "ids": [1, 2],
        "limit": None,
        "count": "three",  # not an integer: kept as written
        "anything": 7, "script": "NaN",  # no schema type: JSON if it is JSON (NaN is not)
        "code": "def f():\n    return 1\n"}  # only the newlines the format adds are removed


def test_qwen3_coder_without_tools_takes_values_that_are_json_as_json():
    result = TOOL_PARSERS["qwen3_coder"]().extract_tool_calls(SETTINGS_CALL)
    arguments = json.loads(result.tool_calls[0].function.arguments)
    assert (arguments["zip_code"], arguments["retries"], arguments["verbose"], arguments["count"]) == (
        75001, 3, "True", "three")


def test_deepseek_v3_markers_are_its_tokens_exactly():
    from fastpage.server.tool_parsers import deepseek_v3 as module

    assert module.CALLS_BEGIN == "<｜tool▁calls▁begin｜>"
    assert {ord(c) for c in module.CALL_BEGIN + module.SEPARATOR + module.CALL_END} >= {
        0xFF5C, 0x2581}  # FULLWIDTH VERTICAL LINE and LOWER ONE EIGHTH BLOCK, not | and _
    # Without the list's opening marker, the calls are found all the same.
    text = deepseek_v3(WEATHER, before="Checking.").replace(DEEPSEEK_CALLS_BEGIN, "")
    assert whole("deepseek_v3", text) == ("Checking.", expected([WEATHER]))
    assert stream("deepseek_v3", text) == ("Checking.", expected([WEATHER]))


def test_internlm_keeps_special_tokens_and_takes_arguments_too():
    assert TOOL_PARSERS["internlm"]().skip_special_tokens() is False
    text = '<|action_start|><|plugin|>\n{"name": "get_weather", "arguments": {"city": "Paris"}}<|action_end|>'
    assert whole("internlm", text) == ("", [("get_weather", {"city": "Paris"})])


# --------------------------------------------------------------------- --tool-parser-plugin

PLUGIN = '''
import dataclasses
import json

from fastpage.server.protocol import FunctionCall
from fastpage.server.tool_parsers import ToolParserManager
from fastpage.server.tool_parsers.base import FoundCalls, ToolParser


@dataclasses.dataclass  # needs its module in sys.modules
class Marker:
    text: str = "CALL "


@ToolParserManager.register_module(["call_prefix", "call_prefix_alias"])
class CallPrefixToolParser(ToolParser):
    """A reply "CALL name {json}" is one call."""
    markers = (Marker().text,)
    closing_chars = frozenset("}")

    def region_start(self, text, search_from):
        return 0 if text.startswith(Marker().text) else -1

    def scan_calls(self, text, pos, first):
        name, _, arguments = text[pos + len(Marker().text):].partition(" ")
        try:
            json.loads(arguments)
        except ValueError:
            return FoundCalls([], pos)
        return FoundCalls([FunctionCall(name=name, arguments=arguments)], len(text))
'''


@pytest.fixture
def registry_restored():
    saved = dict(TOOL_PARSERS)
    yield
    TOOL_PARSERS.clear()
    TOOL_PARSERS.update(saved)


def server_args(*argv):
    from fastpage.entrypoints.openai.api_server import add_server_args

    return add_server_args(argparse.ArgumentParser()).parse_args(list(argv))


def test_plugin_parser_is_used_by_name(tmp_path, registry_restored):
    from fastpage.entrypoints.openai.api_server import check_tool_parser_args

    plugin = tmp_path / "call_prefix_plugin.py"
    plugin.write_text(PLUGIN)
    args = server_args("--tool-parser-plugin", str(plugin), "--tool-call-parser", "call_prefix",
                       "--enable-auto-tool-choice")
    check_tool_parser_args(args)
    check_tool_parser_args(args)  # every server process checks; the file runs once per process
    assert TOOL_PARSERS["call_prefix"] is TOOL_PARSERS["call_prefix_alias"]
    text = 'CALL get_weather {"city": "Paris"}'
    assert whole("call_prefix", text) == ("", [("get_weather", {"city": "Paris"})])
    assert stream("call_prefix", text) == ("", [("get_weather", {"city": "Paris"})])


@pytest.mark.parametrize("plugin_text,message", [
    (None, "--tool-parser-plugin: no such file"),
    ("raise RuntimeError('broken plugin')", "--tool-parser-plugin .* failed to load: RuntimeError: broken plugin"),
    ("def f(:\n", "--tool-parser-plugin .* failed to load: SyntaxError"),
    ("from fastpage.server.tool_parsers import ToolParserManager\n"
     "ToolParserManager.register_module('x')(dict)", "failed to load: TypeError: .*not a ToolParser subclass"),
])
def test_a_plugin_that_cannot_load_fails_the_start_naming_the_flag(tmp_path, registry_restored, plugin_text,
                                                                   message):
    from fastpage.entrypoints.openai.api_server import check_tool_parser_args

    plugin = tmp_path / "plugin.py"
    if plugin_text is not None:
        plugin.write_text(plugin_text)
    with pytest.raises(ValueError, match=message):
        check_tool_parser_args(server_args("--tool-parser-plugin", str(plugin), "--tool-call-parser", "x"))


def test_unknown_parser_name_fails_the_start_naming_the_flag():
    from fastpage.entrypoints.openai.api_server import check_tool_parser_args

    with pytest.raises(ValueError, match="--tool-call-parser 'no_such_format' is not a known parser.*pythonic"):
        check_tool_parser_args(server_args("--tool-call-parser", "no_such_format"))
    with pytest.raises(ValueError, match="--enable-auto-tool-choice needs --tool-call-parser"):
        check_tool_parser_args(server_args("--enable-auto-tool-choice"))
