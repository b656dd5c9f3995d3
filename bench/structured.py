"""Structured outputs: what a JSON schema on every request costs.

GPU (default): DESIGN.md's throughput workload (nano-vllm's 256 requests, prompts and outputs of 100 to
1024 tokens, greedy, EOS ignored) on random weights in the Qwen3-0.6B shape with SmolLM2's vocabulary
and tokenizer (49,152 tokens, as bench/device/serving_gpu.py; a grammar needs real token strings), run
free and with every request under SCHEMA (nested objects, enums, ranges, arrays; compact JSON, as with
free whitespace a random model writes nothing but whitespace), alternating, in one process.
With EOS ignored a request whose JSON is complete goes on unconstrained (vLLM's rule), so both modes
produce exactly the same tokens' count; the constrained rows say how many outputs xgrammar's own
matcher (in Python) finds following the schema, and how many tokens were generated under it. Rows:
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

# A store's catalogue: nested objects, enums, numbers and integers with ranges, bounded strings, and a
# long array of products, so that every output token of the workload is generated under the grammar.
PRODUCT = {
    "type": "object",
    "properties": {
        "sku": {"type": "string", "maxLength": 12},
        "name": {"type": "string", "maxLength": 24},
        "category": {"enum": ["books", "garden", "kitchen", "toys", "tools"]},
        "price": {"type": "number", "minimum": 0, "maximum": 10000},
        "quantity": {"type": "integer", "minimum": 0, "maximum": 1000},
        "tags": {"type": "array", "items": {"enum": ["new", "sale", "gift"]}, "maxItems": 3},
    },
    "required": ["sku", "name", "category", "price", "quantity", "tags"],
}
SCHEMA = {
    "type": "object",
    "properties": {
        "store": {"type": "object",
                  "properties": {"name": {"type": "string", "maxLength": 24},
                                 "address": {"type": "object",
                                             "properties": {"street": {"type": "string", "maxLength": 32},
                                                            "city": {"type": "string", "maxLength": 24},
                                                            "country": {"enum": ["FR", "DE", "US", "JP"]}},
                                             "required": ["street", "city", "country"]}},
                  "required": ["name", "address"]},
        "status": {"enum": ["open", "closed", "moving"]},
        "products": {"type": "array", "items": PRODUCT, "minItems": 64},
    },
    "required": ["store", "status", "products"],
}
# The same with a few products: a CPU run whose JSON always ends.
SCHEMA_BOUNDED = {**SCHEMA, "properties": {**SCHEMA["properties"], "products": {
    "type": "array", "items": PRODUCT, "minItems": 1, "maxItems": 3}}}


def grammar_checker(tokenizer, vocab_size: int, schema: dict):
    """An independent check, in Python through xgrammar's own matcher: the output's tokens follow the
    schema up to where its JSON is complete (after which it is unconstrained)."""
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer.hf, vocab_size=vocab_size,
                                              stop_token_ids=list(tokenizer.eos_token_ids))
    compiled = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(schema), any_whitespace=False)

    def follows(token_ids) -> tuple[bool, int]:
        """(every token up to the JSON's end allowed, tokens under the grammar)."""
        matcher = xgr.GrammarMatcher(compiled)
        for i, token in enumerate(token_ids):
            if matcher.is_completed():
                return True, i
            if not matcher.accept_token(token):
                return False, i
        return True, len(token_ids)

    return follows


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
    follows = grammar_checker(tokenizer, llm.llm_engine.model_config.vocab_size, SCHEMA)
    inputs = [{"prompt_token_ids": p} for p in prompts]

    def params(constrained: bool, length: int) -> SamplingParams:
        return SamplingParams(temperature=0, ignore_eos=True, max_tokens=length,
                              structured_outputs=StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True)
                              if constrained else None)

    llm.generate(inputs[:8], [params(True, 32) for _ in range(8)], use_tqdm=False)  # warm-up, grammar compiled
    rows = []
    for repeat in range(args.repeats):
        for constrained in ((False, True) if repeat % 2 == 0 else (True, False)):  # neither mode always first
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
                checks = [follows(list(o.outputs[0].token_ids)) for o in outputs]
                row.update(outputs_following_schema=sum(ok for ok, _ in checks),
                           tokens_under_grammar=sum(n for _, n in checks),
                           sample_output=tokenizer.decode(list(outputs[0].outputs[0].token_ids)[:60]))
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.profile:
        rows += [profile_decode(llm, inputs, params, constrained, device, args.commit) for constrained in (False, True)]
    return rows


def profile_decode(llm, inputs, params, constrained: bool, device: str, commit: str) -> dict:
    """Steady decode steps of all 256 requests under torch.profiler (step_profile.profile_steps): where
    a constrained step's time goes."""
    from step_profile import profile_steps

    engine = llm.llm_engine
    for i, prompt in enumerate(inputs):
        engine.add_request(f"profile-{constrained}-{i}", prompt, params(constrained, 300))
    for _ in range(60):  # the prefills, then decode
        engine.step()
    row = profile_steps(engine, 10)
    while engine.has_unfinished_requests():
        engine.step()
    row.update(engine="fastpage", device=device, workload=WORKLOAD, mode="constrained" if constrained else "free",
               commit=commit)
    print(json.dumps(row), flush=True)
    return row


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
    parser.add_argument("--profile", action="store_true", help="then profile decode steps, free and constrained")
    parser.add_argument("--tokenizer-dir", default=os.path.join(os.path.dirname(HERE), ".device", "smollm2-tokenizer"))
    parser.add_argument("--path", default="/tmp/fastpage_bench/qwen3-0.6b-smollm2-vocab")
    args = parser.parse_args()
    rows = cpu_rows(args) if args.mask_cost else gpu_rows(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
