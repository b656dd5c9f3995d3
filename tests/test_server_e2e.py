"""The server end to end: the official openai client against a real `python -m
fastpage.entrypoints.openai.api_server` process serving the tiny random Llama of tests/tiny_models.py
with the tiny byte-level tokenizer of tests/tiny_tokenizer.py, without and with async scheduling.

Generated text and logprobs are checked against HF transformers on the same weights."""

import json
import os
import re
import threading
import time

import httpx
import openai
import pytest
import torch
import transformers

from server_process import running_server
from tiny_models import tiny_models  # noqa: F401  (session fixture)
from tiny_tokenizer import byte_level_bpe

API_KEY = "test-key"
MAX_MODEL_LEN = 256
# ChatML that also renders tool calls and the tool list (the tiny tokenizer's own template does not).
CHATML_WITH_TOOLS = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if tools %}<|im_start|>tools\n{% for t in tools %}{{ t.function.name }} {% endfor %}<|im_end|>\n{% endif %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


# Every test runs against a server without and with async scheduling (the default on one GPU, opt-in
# on the CPU), and with two API-server processes beside an engine process (--api-server-count 2): the
# same outputs are expected every way.
SERVER_FLAGS = {"sync": [], "async-scheduling": ["--async-scheduling"],
                "api-servers": ["--async-scheduling", "--api-server-count", "2"]}


@pytest.fixture(scope="module", params=sorted(SERVER_FLAGS))
def server(request, tiny_models, tmp_path_factory):  # noqa: F811
    path = tiny_models["llama"]
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        byte_level_bpe(256, all_bytes=False).save_pretrained(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    work = tmp_path_factory.mktemp("server")
    template_file = work / "chatml_tools.jinja"
    template_file.write_text(CHATML_WITH_TOOLS)
    args = ["fastpage.entrypoints.openai.api_server", "--model", path, "--served-model-name", "tiny",
            "tiny-alias", "--max-model-len", str(MAX_MODEL_LEN), "--enable-auto-tool-choice",
            "--tool-call-parser", "hermes", "--chat-template", str(template_file), "--max-num-seqs", "16",
            "--dtype", "float32", "--device", "cpu", "--kv-cache-memory-bytes", str(4 << 20),
            "--disable-log-stats"] + SERVER_FLAGS[request.param]
    with running_server(args, work / "server.log", env={"FASTPAGE_API_KEY": API_KEY}) as base:
        yield {"base": base, "model": model, "tokenizer": tokenizer}


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


@torch.no_grad()
def hf_greedy(server, prompt_ids, max_tokens):
    """Plain argmax decoding with transformers (no eos: the requests set ignore_eos)."""
    ids = list(prompt_ids)
    for _ in range(max_tokens):
        ids.append(int(server["model"](torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt_ids):]


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
    messages = [{"role": "system", "content": "Numbers 0123456789"},
                {"role": "user", "content": [{"type": "text", "text": "Hello world!"},
                                             {"type": "text", "text": "The quick brown fox"}]}]
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
        # Keyed by token text, as in OpenAI's format: tokens that decode alike (partial UTF-8) share a key.
        top_ids = reference[i].topk(3).indices.tolist()
        assert set(lp.top_logprobs[i]) == {server["tokenizer"].decode([t]) for t in top_ids + [token_id]}
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
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {**call, "function": {**call["function"], "arguments": json.dumps({"city": "Paris"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees and sunny"},
    ]
    # The reference: transformers renders the same template (arguments as a mapping, as templates expect).
    reference = server["tokenizer"].apply_chat_template(
        [*messages[:1], {**messages[1], "tool_calls": [call]}, messages[2]], tools=[WEATHER_TOOL],
        chat_template=CHATML_WITH_TOOLS, add_generation_prompt=True, tokenize=False)
    rendered = httpx.post(server["base"] + "/tokenize", headers=auth(),
                          json={"model": "tiny", "messages": messages, "tools": [WEATHER_TOOL]}).json()
    assert rendered["tokens"] == server["tokenizer"].encode(reference, add_special_tokens=False)
    auto = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER_TOOL],
                                          max_tokens=8, temperature=0)
    assert auto.choices[0].message.role == "assistant"
    named_choice = {"type": "function", "function": {"name": "get_weather"}}
    named = client.chat.completions.create(model="tiny", messages=messages[:1], tools=[WEATHER_TOOL],
                                           max_tokens=8, temperature=0, tool_choice=named_choice,
                                           extra_body={"ignore_eos": True})
    [named_call] = named.choices[0].message.tool_calls
    assert named_call.function.name == "get_weather" and named_call.type == "function"
    # A grammar holds the reply to the function's parameters; 8 tokens cut it off: "length", not "stop".
    assert named.choices[0].finish_reason == "length" and named.choices[0].message.content is None
    chunks = list(client.chat.completions.create(model="tiny", messages=messages[:1], tools=[WEATHER_TOOL],
                                                 max_tokens=8, temperature=0, tool_choice=named_choice,
                                                 stream=True, extra_body={"ignore_eos": True}))
    deltas = [call for c in chunks if c.choices for call in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function.name == "get_weather" and all(d.index == 0 for d in deltas)
    # The named call's arguments are the reply's text, the same streamed or not.
    assert "".join(d.function.arguments or "" for d in deltas) == named_call.function.arguments


def test_structured_output_in_every_server_mode(client):
    # The grammar travels with the request to whichever process runs the engine (API servers: msgpack).
    for stream in (False, True):
        request = dict(model="tiny", prompt=PROMPT, max_tokens=12, temperature=1.0, seed=3,
                       extra_body={"guided_regex": "[0-9]{2,4}"})
        if stream:
            text = "".join(c.choices[0].text for c in client.completions.create(stream=True, **request) if c.choices)
        else:
            text = client.completions.create(**request).choices[0].text
        assert re.fullmatch("[0-9]{2,4}", text), text


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


def wait_until_idle(server, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while metric(server, "num_requests_running") or metric(server, "kv_cache_usage_perc"):
        assert time.monotonic() < deadline, "blocks still in use"
        time.sleep(0.2)


def test_client_disconnect_aborts_and_frees_blocks(server):
    wait_until_idle(server)
    generated_before = metric(server, "generation_tokens_total")
    n, max_tokens = 16, MAX_MODEL_LEN - 16
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": max_tokens, "n": n, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", server["base"] + "/v1/completions", json=body, headers=auth()) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 4:
                break  # leaving the block closes the connection
    wait_until_idle(server)
    # Cut short: far fewer tokens than running all 16 sequences to max_tokens would make.
    assert metric(server, "generation_tokens_total") - generated_before < n * max_tokens / 2


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
    wait_until_idle(server, timeout_s=10)
    assert metric(server, "num_requests_waiting") == 0
