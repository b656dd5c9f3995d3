"""Request models: every client-controlled field is bounded and errors name the field."""

import pytest
from pydantic import ValidationError

from fastpage.server.protocol import (MAX_LOGPROBS, MAX_N, MAX_STOP_STRINGS, ChatCompletionRequest,
                                      CompletionRequest)

USER = [{"role": "user", "content": "hi"}]


def field_of(err: ValidationError) -> str:
    first = err.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    return getattr(cause, "param", None) or str(first["loc"][0])


@pytest.mark.parametrize("fields,param", [
    ({"n": MAX_N + 1}, "n"),
    ({"n": 0}, "n"),
    ({"best_of": 1, "n": 2}, "best_of"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"logprobs": MAX_LOGPROBS + 1}, "logprobs"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"stop": ["x"] * (MAX_STOP_STRINGS + 1)}, "stop"),
    ({"stop": "y" * 5000}, "stop"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"stream": True, "n": 1, "best_of": 2}, "best_of"),
    ({"logit_bias": {"not-a-token": 1.0}}, "logit_bias"),
    ({"prompt_logprobs": 100}, "prompt_logprobs"),
    ({"prompt": []}, "prompt"),
    ({"suffix": "tail"}, "suffix"),
])
def test_completion_request_bounds(fields, param):
    body = {"prompt": "hello", **fields}
    with pytest.raises(ValidationError) as info:
        CompletionRequest(**body)
    assert field_of(info.value) == param


def test_completion_prompt_forms():
    assert CompletionRequest(prompt="a").prompts() == ["a"]
    assert CompletionRequest(prompt=["a", "b"]).prompts() == ["a", "b"]
    assert CompletionRequest(prompt=[1, 2]).prompts() == [[1, 2]]
    assert CompletionRequest(prompt=[[1], [2, 3]]).prompts() == [[1], [2, 3]]


@pytest.mark.parametrize("fields,param", [
    ({"messages": []}, "messages"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": MAX_LOGPROBS + 1}, "top_logprobs"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"continue_final_message": True}, "continue_final_message"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
])
def test_chat_request_bounds(fields, param):
    body = {"messages": USER, **fields}
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest(**body)
    assert field_of(info.value) == param


def test_chat_max_completion_tokens_wins_over_max_tokens():
    assert ChatCompletionRequest(messages=USER, max_tokens=5, max_completion_tokens=7).max_new_tokens() == 7
    assert ChatCompletionRequest(messages=USER, max_tokens=5).max_new_tokens() == 5
    assert ChatCompletionRequest(messages=USER).max_new_tokens() is None
