"""Structured outputs: what a JSON schema on every request costs.

GPU (default): DESIGN.md's throughput workload (nano-vllm's 256 requests, prompts and outputs of 100 to
1024 tokens, greedy, EOS ignored) on random weights in the Qwen3-0.6B shape with SmolLM2's vocabulary
and tokenizer (49,152 tokens, as bench/device/serving_gpu.py; a grammar needs real token strings), run
free and with every request under SCHEMA (nested objects, enums, arrays), alternating, in one process.
With EOS ignored a request whose JSON is complete goes on unconstrained (vLLM's rule), so both modes
produce exactly the same tokens' count; the rows say how many were generated under the grammar and
check that every output starts with a JSON document. Rows:
{engine, device, workload: "nano-json-schema", mode: "constrained" | "free", output_tok_per_s, commit}.

  python bench/device/serving_gpu.py --write-tokenizer      # here, once: .device/smollm2-tokenizer/
  # on the GPU machine, carry [".device", ".whl"], the wheels installed on PYTHONPATH first:
  python3 bench/structured.py --out structured.json --commit abc1234

CPU (--mask-cost): the default model, requests under SCHEMA_BOUNDED until their JSON ends (EOS kept),
under torch.profiler: the microseconds per token per request spent filling bitmasks
(fastpage::grammar_bitmask) and advancing matchers (fastpage::grammar_accept).

  python bench/structured.py --mask-cost --out bench/results/structured_cpu.json --commit abc1234
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "device"))
WORKLOAD = "nano-json-schema"

SCHEMA = {
    "type": "object",
    "properties": {
        "order_id": {"type": "integer"},
        "status": {"enum": ["pending", "shipped", "delivered", "cancelled"]},
        "customer": {"type": "object",
                     "properties": {"name": {"type": "string"}, "email": {"type": "string"},
                                    "address": {"type": "object",
                                                "properties": {"street": {"type": "string"},
                                                               "city": {"type": "string"},
                                                               "country": {"enum": ["FR", "DE", "US", "JP"]}},
                                                "required": ["street", "city", "country"]}},
                     "required": ["name", "email", "address"]},
        "items": {"type": "array",
                  "items": {"type": "object",
                            "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"},
                                           "price": {"type": "number"},
                                           "tags": {"type": "array", "items": {"enum": ["new", "sale", "gift"]}}},
                            "required": ["sku", "quantity", "price"]}},
        "notes": {"type": "string"},
    },
    "required": ["order_id", "status", "customer", "items"],
}
# The same shape with bounded strings and arrays: a CPU run whose JSON always ends.
SCHEMA_BOUNDED = json.loads(json.dumps(SCHEMA).replace('"type": "string"', '"type": "string", "maxLength": 16')
                            .replace('"type": "array"', '"type": "array", "maxItems": 3'))


def json_prefix_ok(text: str) -> bool:
    """The output starts with one complete JSON object (what follows it is unconstrained)."""
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError:
        return False
    return isinstance(value, dict)


def gpu_rows(args) -> list[dict]:
    import torch
    from serving_gpu import make_model
    from throughput_gpu import nano_workload

    from fastpage import LLM, SamplingParams
    from fastpage.sampling_params import StructuredOutputsParams

    args.tiny = False
    path = make_model(args)
    prompts, output_lens = nano_workload()
    llm = LLM(model=path, dtype="bfloat16", max_model_len=4096, max_num_seqs=256, max_num_batched_tokens=8192,
              gpu_memory_utilization=0.85)
    device = torch.cuda.get_device_name()
    tokenizer = llm.get_tokenizer()
    inputs = [{"prompt_token_ids": p} for p in prompts]

    def params(constrained: bool, length: int) -> SamplingParams:
        return SamplingParams(temperature=0, ignore_eos=True, max_tokens=length,
                              structured_outputs=StructuredOutputsParams(json=SCHEMA) if constrained else None)

    llm.generate(inputs[:8], [params(True, 32) for _ in range(8)], use_tqdm=False)  # warm-up, grammar compiled
    rows = []
    for repeat in range(args.repeats):
        for constrained in (False, True):
            start = time.perf_counter()
            outputs = llm.generate(inputs, [params(constrained, n) for n in output_lens], use_tqdm=False)
            elapsed = time.perf_counter() - start
            produced = sum(len(o.outputs[0].token_ids) for o in outputs)
            assert produced == sum(output_lens), "every request must produce exactly its length"
            row = dict(engine="fastpage", device=device, workload=WORKLOAD,
                       mode="constrained" if constrained else "free", repeat=repeat,
                       output_tok_per_s=round(produced / elapsed, 1), elapsed_s=round(elapsed, 3),
                       output_tokens=produced, num_requests=len(prompts), commit=args.commit,
                       model_shape="qwen3-0.6b, smollm2 vocab (49152)")
            if constrained:
                texts = [tokenizer.decode(list(o.outputs[0].token_ids)) for o in outputs]
                ok = [json_prefix_ok(t) for t in texts]
                json_lengths = [len(tokenizer.encode(t[:json.JSONDecoder().raw_decode(t)[1]],
                                                     add_special_tokens=False)) if good else n
                                for t, good, n in zip(texts, ok, output_lens)]
                row.update(outputs_starting_with_json=sum(ok),
                           tokens_under_grammar_approx=sum(min(j, n) for j, n in zip(json_lengths, output_lens)))
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def cpu_rows(args) -> list[dict]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from fastpage import LLM, SamplingParams
    from fastpage.sampling_params import StructuredOutputsParams

    llm = LLM(device="cpu", max_model_len=1024, kv_cache_memory_bytes=256 << 20)
    prompts = [f"Order number {i}: describe it." for i in range(args.cpu_requests)]
    params = [SamplingParams(temperature=1.0, seed=i, max_tokens=400,
                             structured_outputs=StructuredOutputsParams(json=SCHEMA_BOUNDED)) for i in range(len(prompts))]
    llm.generate(prompts[:2], params[:2], use_tqdm=False)  # grammar compiled, warm
    engine = llm.llm_engine
    for i, (prompt, p) in enumerate(zip(prompts, params)):
        engine.add_request(f"mask-{i}", prompt, p)
    finished_outputs = []
    # Stepped on this thread: the profiler records the engine's scopes on the thread it runs on.
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        while engine.has_unfinished_requests():
            finished_outputs += [o for o in engine.step() if o.finished]
    tokens = sum(len(o.outputs[0].token_ids) for o in finished_outputs)
    finished = sum(o.outputs[0].finish_reason == "stop" for o in finished_outputs)
    spent = {e.key: e.cpu_time_total for e in prof.key_averages()
             if e.key in ("fastpage::grammar_bitmask", "fastpage::grammar_accept")}
    row = dict(engine="fastpage", device=f"cpu-{os.cpu_count()}core", workload="default-model-json-schema-mask-cost",
               mode="constrained", num_requests=len(prompts), output_tokens=tokens, finished_by_grammar=finished,
               bitmask_us_per_token=round(spent.get("fastpage::grammar_bitmask", 0.0) / tokens, 2),
               accept_us_per_token=round(spent.get("fastpage::grammar_accept", 0.0) / tokens, 2),
               torch_threads=torch.get_num_threads(), commit=args.commit)
    print(json.dumps(row), flush=True)
    return [row]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--commit", default="unknown", help="the tree's commit (the GPU machine's copy has no .git)")
    parser.add_argument("--mask-cost", action="store_true", help="the CPU measurement instead of the GPU run")
    parser.add_argument("--cpu-requests", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tokenizer-dir", default=os.path.join(os.path.dirname(HERE), ".device", "smollm2-tokenizer"))
    parser.add_argument("--path", default="/tmp/fastpage_bench/qwen3-0.6b-smollm2-vocab")
    args = parser.parse_args()
    rows = cpu_rows(args) if args.mask_cost else gpu_rows(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
