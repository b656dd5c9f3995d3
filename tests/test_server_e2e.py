"""The server end to end: the official openai client against a real `python -m
fastpage.entrypoints.openai.api_server` process serving a tiny random Llama made here.

Generated text is checked against HF transformers greedy decoding on the same weights."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

pytest.importorskip("fastpage.llm_engine", reason="the LLMEngine has not landed on this branch yet")
openai = pytest.importorskip("openai")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

API_KEY = "test-key"
MAX_MODEL_LEN = 256
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
          "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>"
          "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
          "{% if tools %}<|im_start|>tools\n{% for t in tools %}{{ t.function.name }} {% endfor %}<|im_end|>\n{% endif %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def make_tiny_llama(path):
    """A byte-level BPE tokenizer trained on a few lines plus a random 2-layer Llama."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.",
              "What is the weather like today?", "<tool_call> get_weather city </tool_call>"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                                bos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    fast.save_pretrained(path)
    config = transformers.LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=MAX_MODEL_LEN, eos_token_id=fast.eos_token_id,
                                      bos_token_id=fast.bos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    return model, fast


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    model, tokenizer = make_tiny_llama(path)
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", FASTPAGE_API_KEY=API_KEY,
               PYTHONPATH=os.pathsep.join([os.path.join(os.path.dirname(__file__), "..", "python"),
                                           os.environ.get("PYTHONPATH", "")]))
    log = open(path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastpage.entrypoints.openai.api_server", "--model", str(path),
         "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "tiny", "tiny-alias",
         "--max-model-len", str(MAX_MODEL_LEN), "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
         "--max-num-seqs", "16", "--dtype", "float32"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {open(path / 'server.log').read()[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server did not become healthy"
        time.sleep(0.3)
    yield {"base": base, "model": model, "tokenizer": tokenizer, "proc": proc}
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key=API_KEY, max_retries=0)


def auth():
    return {"Authorization": f"Bearer {API_KEY}"}


def metric(server, name) -> float:
    text = httpx.get(server["base"] + "/metrics").text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(f"fastpage:{name}{{")]
    assert values, f"metric {name} missing"
    return values[0]


def hf_greedy(server, prompt_ids, max_tokens):
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = server["model"].generate(ids, max_new_tokens=max_tokens, do_sample=False,
                                       eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


PROMPT = "The quick brown fox"


def test_models(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny", "tiny-alias"]
    assert all(m.model_extra["max_model_len"] == MAX_MODEL_LEN for m in models)


def test_completion_greedy_matches_transformers_streamed_and_not(server, client):
    prompt_ids = server["tokenizer"].encode(PROMPT)
    expected = server["tokenizer"].decode(hf_greedy(server, prompt_ids, 24))
    whole = client.completions.create(model="tiny", prompt=prompt_ids, max_tokens=24, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert whole.choices[0].text == expected
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.prompt_tokens == len(prompt_ids) and whole.usage.completion_tokens == 24
    chunks = list(client.completions.create(model="tiny-alias", prompt=prompt_ids, max_tokens=24,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24


def test_chat_streamed_equals_non_streamed(client):
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": [{"type": "text", "text": "What is the weather"},
                                             {"type": "text", "text": "like today?"}]}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=16,
                                                 temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for c in chunks if c.choices and c.choices[0].finish_reason) == 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert whole.choices[0].finish_reason in ("stop", "length")


def test_raw_sse_ends_with_done(server):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", server["base"] + "/v1/completions", json=body, headers=auth()) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_n3_and_seed(client):
    kwargs = dict(model="tiny", prompt=PROMPT, max_tokens=8, temperature=1.0, n=3,
                  extra_body={"ignore_eos": True})
    first = client.completions.create(seed=123, **kwargs)
    again = client.completions.create(seed=123, **kwargs)
    assert sorted(c.index for c in first.choices) == [0, 1, 2]
    assert first.usage.completion_tokens == 24
    assert [c.text for c in first.choices] == [c.text for c in again.choices]


def test_completion_logprobs_match_transformers(server, client):
    prompt_ids = server["tokenizer"].encode(PROMPT)
    result = client.completions.create(model="tiny", prompt=prompt_ids, max_tokens=6, temperature=0,
                                       logprobs=3, extra_body={"ignore_eos": True})
    lp = result.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    generated = hf_greedy(server, prompt_ids, 6)
    with torch.no_grad():
        logits = server["model"](torch.tensor([prompt_ids + generated])).logits[0]
    reference = torch.log_softmax(logits.double(), -1)[len(prompt_ids) - 1:-1]
    for i, token_id in enumerate(generated):
        assert lp.token_logprobs[i] == pytest.approx(reference[i, token_id].item(), abs=2e-3)
        assert 3 <= len(lp.top_logprobs[i]) <= 4
        assert max(lp.top_logprobs[i].values()) == pytest.approx(lp.token_logprobs[i], abs=1e-6)
    assert lp.text_offset == sorted(lp.text_offset)


def test_chat_logprobs_shape(client):
    result = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=5, temperature=0, logprobs=True, top_logprobs=2,
                                            extra_body={"ignore_eos": True})
    content = result.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy picks the top


def test_stop_string(client):
    base = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = base[len(base) // 2:len(base) // 2 + 3]
    assert stop.strip(), "need a visible stop string"
    cut = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True}).choices[0]
    assert cut.text == base[:base.index(stop)]
    assert cut.finish_reason == "stop" and cut.model_extra["stop_reason"] == stop


def test_tool_round_trip(server, client):
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees and sunny"},
    ]
    rendered = httpx.post(server["base"] + "/tokenize", headers=auth(),
                          json={"model": "tiny", "messages": messages, "tools": [WEATHER_TOOL]}).json()
    text = server["tokenizer"].decode(rendered["tokens"])
    assert "21 degrees and sunny" in text and '"city": "Paris"' in text and "get_weather" in text
    auto = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER_TOOL],
                                          max_tokens=8, temperature=0)
    assert auto.choices[0].message.role == "assistant"
    named = client.chat.completions.create(
        model="tiny", messages=messages[:1], tools=[WEATHER_TOOL], max_tokens=8, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = named.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and call.type == "function"


def test_tokenize_detokenize(server):
    tokens = httpx.post(server["base"] + "/tokenize", headers=auth(), json={"prompt": PROMPT}).json()
    assert tokens["tokens"] == server["tokenizer"].encode(PROMPT) and tokens["count"] == len(tokens["tokens"])
    back = httpx.post(server["base"] + "/detokenize", headers=auth(), json={"tokens": tokens["tokens"]}).json()
    assert back["prompt"] == server["tokenizer"].decode(tokens["tokens"])


def bad_requests(vocab_size):
    user = [{"role": "user", "content": "hi"}]
    yield "/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature"
    yield "/v1/completions", {"prompt": "x", "top_p": 1.5}, 400, "top_p"
    yield "/v1/completions", {"prompt": "x", "n": 100000}, 400, "n"
    yield "/v1/completions", {"prompt": "x", "logprobs": 21}, 400, "logprobs"
    yield "/v1/completions", {"prompt": "x", "max_tokens": MAX_MODEL_LEN}, 400, "max_tokens"
    yield "/v1/completions", {"prompt": [vocab_size + 5]}, 400, "prompt"
    yield "/v1/completions", {"prompt": [-1]}, 400, "prompt"
    yield "/v1/completions", {"prompt": "x", "stop_token_ids": [vocab_size]}, 400, "stop_token_ids"
    yield "/v1/completions", {"prompt": "x", "stop": ["s"] * 1000}, 400, "stop"
    yield "/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options"
    yield "/v1/completions", {"prompt": "x", "model": "no-such-model"}, 404, "model"
    yield "/v1/completions", {"prompt": "x" * 40_000_000}, 413, None
    yield "/v1/chat/completions", {"messages": []}, 400, "messages"
    yield "/v1/chat/completions", {"messages": user, "top_logprobs": 5}, 400, "top_logprobs"
    yield "/v1/chat/completions", {"messages": user, "max_completion_tokens": 10**9}, 400, "max_tokens"
    yield "/v1/chat/completions", {"messages": user, "logit_bias": {str(vocab_size): 1}}, 400, "logit_bias"
    yield "/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, 400, "messages"


def test_bad_inputs_rejected_while_a_stream_keeps_going(server):
    vocab_size = len(server["tokenizer"])
    stream_text = []

    def long_stream():
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 120, "temperature": 0, "stream": True,
                "ignore_eos": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", server["base"] + "/v1/completions", json=body, headers=auth(),
                          timeout=120) as r:
            stream_text.extend(line for line in r.iter_lines() if line)

    thread = threading.Thread(target=long_stream)
    thread.start()
    for path, body, status, param in bad_requests(vocab_size):
        r = httpx.post(server["base"] + path, json={"model": "tiny", **body} if "model" not in body else body,
                       headers=auth(), timeout=30)
        assert r.status_code == status, (path, body if len(str(body)) < 200 else "big", r.text[:300])
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert error["param"] == param, (body if len(str(body)) < 200 else "big", error)
    r = httpx.post(server["base"] + "/v1/completions", content=b"{not json", headers=auth())
    assert r.status_code == 400
    thread.join(timeout=120)
    assert stream_text[-1] == "data: [DONE]"
    usage = json.loads(stream_text[-2][6:])["usage"]
    assert usage["completion_tokens"] == 120
    assert httpx.get(server["base"] + "/health").status_code == 200


def test_client_disconnect_frees_blocks(server):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 200, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server["base"] + "/v1/completions", json=body, headers=auth()) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 6:
                break
        assert metric(server, "kv_cache_usage_perc") > 0 or metric(server, "num_requests_running") > 0
    deadline = time.monotonic() + 20
    while metric(server, "num_requests_running") or metric(server, "kv_cache_usage_perc"):
        assert time.monotonic() < deadline, "the aborted request kept its blocks"
        time.sleep(0.2)


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"),
    ("POST", "/tokenize"), ("POST", "/detokenize"), ("GET", "/version"), ("GET", "/openapi.json")])
def test_api_key_required(server, method, path):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.request(method, server["base"] + path, headers=headers, json={})
        assert r.status_code == 401 and r.json()["error"]["code"] == 401


def test_health_and_metrics_are_open(server):
    assert httpx.get(server["base"] + "/health").status_code == 200
    text = httpx.get(server["base"] + "/metrics").text
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "prompt_tokens_total",
                 "generation_tokens_total", "time_to_first_token_seconds_bucket",
                 "e2e_request_latency_seconds_bucket", "prefix_cache_queries_total"):
        assert f"fastpage:{name}" in text


def test_no_block_leaked_when_idle(server):
    deadline = time.monotonic() + 10
    while metric(server, "kv_cache_usage_perc") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert metric(server, "num_requests_running") == 0 and metric(server, "num_requests_waiting") == 0
