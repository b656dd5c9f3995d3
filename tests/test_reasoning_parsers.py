"""Reasoning parsers: the (reasoning, content) split of finished replies, the same split streamed piece
by piece however the text is cut, the end marker's token ids, the streamed split composed with the
tool-call parser, and the server with --reasoning-parser deepseek_r1 through the openai client."""

import argparse
import asyncio
import os
import shutil
import types

import httpx
import openai
import pytest

from fastpage.entrypoints.openai.api_server import add_server_args
from fastpage.outputs import CompletionOutput, RequestOutput
from fastpage.server.async_engine import _Waker
from fastpage.server.reasoning_parsers import REASONING_PARSERS, reasoning_collector
from fastpage.server.serving_chat import tool_call_collector
from fastpage.tokenizer import Tokenizer
from server_process import running_server
from tiny_models import VOCAB, tiny_models  # noqa: F401  (session fixture)
from tiny_tokenizer import byte_level_bpe

END = "</think>"

# (reply, reasoning, content) for every parser with thinking on.
SPLITS = [
    ("Nine is odd.</think>The answer is 9.", "Nine is odd.", "The answer is 9."),
    ("<think>Nine is odd.</think>The answer is 9.", "Nine is odd.", "The answer is 9."),  # the model opened it
    ("<think>\nstep 1\n</think>\n\nDone", "\nstep 1\n", "\n\nDone"),
    ("still thinking when max_tokens hit", "still thinking when max_tokens hit", None),
    ("<think>cut short", "cut short", None),
    ("</think>No thinking at all.", None, "No thinking at all."),  # empty reasoning
    ("<think></think>Hi", None, "Hi"),
    ("All thought, no answer.</think>", "All thought, no answer.", None),
    ("a</think>b</think>c", "a", "b</think>c"),  # only the first marker ends the thinking
    ("x<think>y</think>z", "x<think>y", "z"),  # <think> is dropped only where the reply opens with it
    ("<thin</think>k", "<thin", "k"),
    ("a < b and c </ d </thin", "a < b and c </ d </thin", None),
    ("", None, None),
]


def new_parser(name, prompt="<|im_start|>assistant\n<think>\n", continue_final_message=False, **template_kwargs):
    return REASONING_PARSERS[name].for_request(prompt, continue_final_message, template_kwargs or None)


def streamed(parser, pieces):
    """(reasoning, content) from the parser's streaming deltas, checking each delta on the way."""
    state = parser.new_stream_state()
    reasoning, content = "", ""
    for k, piece in enumerate(pieces):
        delta = parser.extract_streaming(piece, state, final=k == len(pieces) - 1)
        assert set(delta) <= {"reasoning_content", "content"} and all(delta.values()), delta
        assert not (content and "reasoning_content" in delta), "reasoning after content"
        reasoning += delta.get("reasoning_content", "")
        content += delta.get("content", "")
        assert len(state.held) < len(END), "held back more than a marker's prefix"
    return reasoning or None, content or None


def cuts(text):
    """Every way to cut text in two and in three pieces (an empty piece too: a token that ends inside
    a UTF-8 character adds no text), and one character at a time."""
    yield [text]
    for i in range(len(text) + 1):
        yield [text[:i], text[i:]]
        for j in range(i, len(text) + 1):
            yield [text[:i], text[i:j], "", text[j:]]
    yield list(text) + [""]


@pytest.mark.parametrize("name", sorted(REASONING_PARSERS))
@pytest.mark.parametrize("reply, reasoning, content", SPLITS)
def test_split_finished_and_streamed_at_every_cut(name, reply, reasoning, content):
    parser = new_parser(name)
    assert parser.extract(reply) == (reasoning, content)
    for pieces in cuts(reply):
        assert streamed(parser, pieces) == (reasoning, content), pieces


def test_stream_sends_text_as_soon_as_it_is_certain():
    parser = new_parser("deepseek_r1")
    state = parser.new_stream_state()
    deltas = [parser.extract_streaming(piece, state) for piece in ("<thi", "nk>Let me", " see</", "th", "ink>It is", " 9.")]
    assert deltas == [{}, {"reasoning_content": "Let me"}, {"reasoning_content": " see"}, {},
                      {"content": "It is"}, {"content": " 9."}]
    assert parser.extract_streaming("", state, final=True) == {}


def test_a_prompt_that_closed_the_thinking_block_makes_the_reply_content():
    # What Qwen3's template writes with enable_thinking=False, and DeepSeek-V3.1's without thinking.
    for prompt in ("<|im_start|>assistant\n<think>\n\n</think>\n\n", "<｜Assistant｜></think>"):
        for name in REASONING_PARSERS:
            parser = new_parser(name, prompt)
            assert parser.reasoning_already_ended
            assert parser.extract("a</think>b") == (None, "a</think>b")
            assert streamed(parser, ["a</th", "ink>b"]) == (None, "a</think>b")
    # A closed block earlier in the conversation says nothing about the new reply.
    history = "<|im_start|>user\nwhat does </think> do?<|im_end|>\n<|im_start|>assistant\n"
    assert not new_parser("deepseek_r1", history).reasoning_already_ended
    assert new_parser("deepseek_r1", history).extract("a</think>b") == ("a", "b")


def test_continuing_a_final_message_continues_its_phase():
    assert new_parser("deepseek_r1", "<|im_start|>assistant\n<think>\nso</think>The answer",
                      continue_final_message=True).extract(" is 9") == (None, " is 9")
    assert new_parser("deepseek_r1", "<|im_start|>assistant\n<think>\nso far",
                      continue_final_message=True).extract(" more</think>9") == (" more", "9")


def test_qwen3_with_thinking_off_takes_the_whole_reply_as_content():
    # vLLM's qwen3 parser (since v0.19) with enable_thinking=False; deepseek_r1 has no such switch.
    for reply in ("plain answer", "odd</think>but still content"):
        qwen3 = new_parser("qwen3", enable_thinking=False)
        assert qwen3.extract(reply) == (None, reply)
        assert streamed(qwen3, list(reply) + [""]) == (None, reply)
    assert new_parser("deepseek_r1", enable_thinking=False).extract("plain answer") == ("plain answer", None)
    assert new_parser("qwen3", enable_thinking=True).extract("plain answer") == ("plain answer", None)


def think_tokenizer():
    """The tiny byte-level tokenizer with <think> and </think> as single tokens (the last two ids of the
    tiny models' vocabulary). Not special: they survive skip_special_tokens, as in DeepSeek-R1's and
    Qwen3's tokenizers."""
    tokenizer = byte_level_bpe(VOCAB - 2, all_bytes=False)
    tokenizer.add_tokens(["<think>", END])
    assert len(tokenizer) == VOCAB
    return tokenizer


def test_end_token_ids():
    think = Tokenizer(think_tokenizer())
    for name in REASONING_PARSERS:
        assert REASONING_PARSERS[name].end_token_ids(think) == [VOCAB - 1]
    # Without a token of its own the marker is several byte-level tokens.
    byte_level = Tokenizer(byte_level_bpe(400, all_bytes=True))
    ids = REASONING_PARSERS["qwen3"].end_token_ids(byte_level)
    assert len(ids) > 1 and byte_level.decode(ids) == END
    # This vocabulary has no "<" or "/": a model using it could never end its thinking.
    with pytest.raises(ValueError, match="cannot write '</think>'"):
        REASONING_PARSERS["deepseek_r1"].end_token_ids(Tokenizer(byte_level_bpe(256, all_bytes=False)))


def test_tool_calls_are_parsed_from_the_content_only():
    """The streamed split runs first on the outputs thread; the tool-call parser sees what follows
    the reasoning, so a call the model only thinks about stays reasoning."""
    thought = 'I could call <tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call> but no.'
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    reply = f"<think>{thought}</think>Checking.{call}"
    pieces = [reply[i:i + 7] for i in range(0, len(reply), 7)]
    ctx = types.SimpleNamespace(tool_call_parser="hermes")

    async def collect():
        req = types.SimpleNamespace(n=1, tools=None)
        collector = reasoning_collector(new_parser("deepseek_r1"), 1, tool_call_collector(ctx, req, "auto"))(_Waker())
        for k, piece in enumerate(pieces):
            last = k == len(pieces) - 1
            collector.put(RequestOutput("r", None, [1], None, [CompletionOutput(
                0, piece, [k], None, None, finish_reason="stop" if last else None)], finished=last))
        return await collector.get()  # the outputs not taken yet, merged

    merged = asyncio.run(collect())
    assert merged.finished
    assert merged.reasoning == {0: thought}
    message = merged.inner.messages[0]
    assert message["content"] == "Checking."
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]] == [
        ("get_weather", '{"city": "Paris"}')]


def test_unknown_parser_is_a_startup_error_listing_the_choices(capsys):
    parser = add_server_args(argparse.ArgumentParser(prog="fastpage serve"))
    assert parser.parse_args(["--reasoning-parser", "qwen3"]).reasoning_parser == "qwen3"
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--reasoning-parser", "deepseek-r1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--reasoning-parser: invalid choice: 'deepseek-r1'" in err
    assert "deepseek_r1" in err and "qwen3" in err


# ---------------------------------------------------------------- the server end to end

# DeepSeek-R1's way: the template opens the thinking block, the model closes it; with
# enable_thinking=False it writes a closed, empty block (as Qwen3's template does).
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n"
    "{% if enable_thinking is defined and not enable_thinking %}\n</think>\n\n{% endif %}{% endif %}")
MESSAGES = [{"role": "user", "content": "Hello world!"}]
MAX_TOKENS = 10
# The tiny model never picks </think> by itself. This bias on its token makes greedy decoding pick it
# first at the 4th token of the reply to MESSAGES (its logit trails the winner's by 3.8, 3.2, 3.3, then
# 2.4): a reply with reasoning before the marker and content after it.
END_BIAS = 2.8
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def model_dir(tiny_models, path, tokenizer):  # noqa: F811
    """The tiny Llama's weights with the given tokenizer."""
    os.makedirs(path)
    source = tiny_models["llama"]
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(os.path.join(source, name), path)
    tokenizer.save_pretrained(path)
    return str(path)


def server_args(path, template_file, *extra):
    return ["fastpage.entrypoints.openai.api_server", "--model", path, "--served-model-name", "tiny",
            "--max-model-len", "256", "--chat-template", str(template_file), "--dtype", "float32",
            "--device", "cpu", "--kv-cache-memory-bytes", str(4 << 20), "--disable-log-stats", *extra]


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("reasoning_server")
    template_file = work / "thinking.jinja"
    template_file.write_text(THINKING_TEMPLATE)
    path = model_dir(tiny_models, work / "model", think_tokenizer())
    args = server_args(path, template_file, "--reasoning-parser", "deepseek_r1",
                       "--enable-auto-tool-choice", "--tool-call-parser", "hermes")
    with running_server(args, work / "server.log") as base:
        yield base


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def raw_reply(server, client, bias, **template_kwargs) -> str:
    """The reply's text without any parser: the chat's prompt through /tokenize, then /v1/completions."""
    tokens = httpx.post(server + "/tokenize", json={"model": "tiny", "messages": MESSAGES,
                                                    "chat_template_kwargs": template_kwargs or None}).json()["tokens"]
    completion = client.completions.create(model="tiny", prompt=tokens, max_tokens=MAX_TOKENS, temperature=0,
                                           logit_bias={str(VOCAB - 1): bias}, extra_body={"ignore_eos": True})
    return completion.choices[0].text


def chat(client, bias, template_kwargs=None, **kwargs):
    return client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0, logit_bias={str(VOCAB - 1): bias},
        extra_body={"ignore_eos": True, "chat_template_kwargs": template_kwargs}, **kwargs)


def streamed_message(stream, n):
    """Per choice: (reasoning, content, tool calls) from the chunks' deltas, reasoning all first."""
    reasoning, content, calls = [""] * n, [""] * n, [[] for _ in range(n)]
    for chunk in stream:
        for choice in chunk.choices:
            i, delta = choice.index, choice.delta
            thought = getattr(delta, "reasoning_content", None)
            assert thought == getattr(delta, "reasoning", None)
            if thought:
                assert not content[i], "reasoning after content"
                reasoning[i] += thought
            content[i] += delta.content or ""
            calls[i] += delta.tool_calls or []
    return [(r or None, c or None, t) for r, c, t in zip(reasoning, content, calls)]


@pytest.mark.parametrize("tools", [None, [WEATHER_TOOL]], ids=["plain", "with-tool-parser"])
def test_server_splits_reasoning_streamed_and_not(server, client, tools):
    raw = raw_reply(server, client, END_BIAS)
    before, _, after = raw.partition(END)
    assert before and after, f"END_BIAS no longer puts {END} mid-reply: {raw!r}"

    message = chat(client, END_BIAS, tools=tools).choices[0].message
    assert (message.reasoning_content, message.content) == (before, after)
    assert message.reasoning == before  # vLLM's current name for it
    assert not message.tool_calls

    stream = chat(client, END_BIAS, tools=tools, n=2, stream=True)
    assert streamed_message(stream, 2) == [(before, after, [])] * 2


def test_server_reply_is_content_when_the_template_closed_the_thinking(server, client):
    # A strong bias: the reply is nothing but markers, and none of them splits it.
    raw = raw_reply(server, client, 100, enable_thinking=False)
    assert raw == END * MAX_TOKENS
    thinking_off = {"enable_thinking": False}
    message = chat(client, 100, thinking_off).choices[0].message
    assert (message.reasoning_content, message.content) == (None, raw)
    assert streamed_message(chat(client, 100, thinking_off, stream=True), 1) == [(None, raw, [])]


def test_reply_without_the_marker_is_all_reasoning(server, client):
    raw = raw_reply(server, client, 0)
    assert END not in raw and raw
    message = chat(client, 0).choices[0].message
    assert (message.reasoning_content, message.content) == (raw, None)
    assert streamed_message(chat(client, 0, stream=True), 1) == [(raw, None, [])]


def test_server_refuses_a_model_that_cannot_write_the_marker(tiny_models, tmp_path):  # noqa: F811
    template_file = tmp_path / "thinking.jinja"
    template_file.write_text(THINKING_TEMPLATE)
    path = model_dir(tiny_models, tmp_path / "model", byte_level_bpe(VOCAB, all_bytes=False))
    with pytest.raises(RuntimeError, match="cannot write '</think>'"):
        with running_server(server_args(path, template_file, "--reasoning-parser", "qwen3"), tmp_path / "log"):
            pass
