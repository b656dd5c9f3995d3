"""Where a step of the Llama-3-8B 1000 x (1000 in / 1000 out) workload spends its time: the running
batch is filled with 1000-token prompts, then one prefill step (max_num_batched_tokens of prompt
tokens) and, once every sequence decodes, a few decode steps run under torch.profiler
(step_profile.profile_steps: kernels, GPU idle inside and between steps, host phases).

Usage (on the GPU machine): python bench/device/profile_llama_steps.py --out profile.json [--kv-cache-dtype fp8]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(__file__))
from model_shapes import make_checkpoint  # noqa: E402
from step_profile import profile_steps  # noqa: E402
from throughput_llama_gpu import OUTPUT_LEN, PROMPT_LEN, default_max_num_seqs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--path", default="/tmp/fastpage_bench/llama-3-8b")
    parser.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8", "fp8_e4m3"])
    parser.add_argument("--max-num-seqs", type=int, default=None, help="default: 208 (bf16 cache) or 416 (fp8)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=16384)
    parser.add_argument("--decode-steps", type=int, default=5)
    args = parser.parse_args()
    max_num_seqs = args.max_num_seqs or default_max_num_seqs(args.kv_cache_dtype)
    if not os.path.exists(os.path.join(args.path, "config.json")):
        make_checkpoint("llama-3-8b", args.path)

    import torch

    from fastpage import LLM, SamplingParams

    llm = LLM(model=args.path, dtype="bfloat16", max_model_len=4096, max_num_seqs=max_num_seqs,
              max_num_batched_tokens=args.max_num_batched_tokens, gpu_memory_utilization=0.9,
              kv_cache_dtype=args.kv_cache_dtype)
    engine = llm.llm_engine
    rng = random.Random(0)
    params = SamplingParams(temperature=0.0, max_tokens=OUTPUT_LEN, ignore_eos=True, detokenize=False)
    for i in range(max_num_seqs):
        engine.add_request(str(i), {"prompt_token_ids": [rng.randrange(10000) for _ in range(PROMPT_LEN)]}, params)
    common = dict(device=torch.cuda.get_device_name(), kv_cache_dtype=args.kv_cache_dtype,
                  max_num_seqs=max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens)
    rows = [{**common, "phase": "prefill step", **profile_steps(engine, 1)}]
    prefill_steps = -(-max_num_seqs * PROMPT_LEN // args.max_num_batched_tokens)
    for _ in range(prefill_steps + 3):  # the rest of the prompts, then warm decode steps (graph capture)
        engine.step()
    rows.append({**common, "phase": f"decode steps at batch {max_num_seqs}, context ~{PROMPT_LEN + 4}",
                 **profile_steps(engine, args.decode_steps)})
    for row in rows:
        print(json.dumps(row, indent=1))
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
