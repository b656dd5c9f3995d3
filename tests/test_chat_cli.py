"""`fastpage generate` and `fastpage chat` on the default model (SmolLM2-135M-Instruct GGUF), greedy.

What they print must be exactly what fastpage.LLM returns for the same prompt or conversation
(LLM's greedy output is checked against transformers in test_gguf.py); chat must keep the
conversation from one turn to the next.
"""

from __future__ import annotations

import argparse
import io
import sys

import pytest

import fastpage
from fastpage.commands import chat, generate
from fastpage.model_loader.default_model import default_model_path

_MAX_TOKENS = 24
_ENGINE_FLAGS = ["--device", "cpu", "--dtype", "float32", "--kv-cache-memory-bytes", str(128 << 20)]


@pytest.fixture(scope="module")
def model_path() -> str:
    try:
        return default_model_path()
    except ValueError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def llm(model_path):
    return fastpage.LLM(model=model_path, dtype="float32", device="cpu", kv_cache_memory_bytes=128 << 20)


def _greedy() -> fastpage.SamplingParams:
    return fastpage.SamplingParams(temperature=0.0, max_tokens=_MAX_TOKENS)


def _parse(command, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


def test_generate_prints_the_completion(llm, capsys):
    prompt = "The capital of France is"
    # No --model: the default model.
    args = _parse(generate, [prompt, "--temperature", "0", "--max-tokens", str(_MAX_TOKENS), *_ENGINE_FLAGS])
    assert generate.run(args) == 0
    expected = llm.generate([prompt], _greedy(), use_tqdm=False)[0].outputs[0].text
    assert expected.startswith(" Paris.")
    assert capsys.readouterr().out == expected + "\n"


def test_generate_with_system_uses_the_chat_template(llm, model_path, capsys):
    args = _parse(generate, ["Say hello.", "--system", "You are a pirate.", "--model", model_path,
                             "--temperature", "0", "--max-tokens", str(_MAX_TOKENS), *_ENGINE_FLAGS])
    generate.run(args)
    messages = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Say hello."}]
    expected = llm.chat(messages, _greedy(), use_tqdm=False)[0].outputs[0].text
    assert capsys.readouterr().out == expected + "\n"


def test_chat_streams_replies_and_keeps_the_conversation(llm, model_path, capsys, monkeypatch):
    first, second = "What is 9.11 vs 9.8, which is bigger?", "Now add them together."
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{first}\n\n{second}\n/exit\nnever read\n"))
    args = _parse(chat, ["--model", model_path, "--temperature", "0", "--max-tokens", str(_MAX_TOKENS),
                         *_ENGINE_FLAGS])
    assert chat.run(args) == 0
    conversation = [{"role": "user", "content": first}]
    reply_1 = llm.chat(conversation, _greedy(), use_tqdm=False)[0].outputs[0].text
    conversation += [{"role": "assistant", "content": reply_1}, {"role": "user", "content": second}]
    reply_2 = llm.chat(conversation, _greedy(), use_tqdm=False)[0].outputs[0].text
    assert reply_1.startswith("The difference between 9.11 and 9.8 is 1.1")
    assert capsys.readouterr().out == f"{reply_1}\n{reply_2}\n"


def test_chat_ends_at_end_of_input(model_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert chat.run(_parse(chat, ["--model", model_path, *_ENGINE_FLAGS])) == 0
    assert capsys.readouterr().out == ""
