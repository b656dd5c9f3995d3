"""DESIGN.md's throughput workload on the GPU, fastpage next to HF transformers `generate` in the same
run: 256 requests, prompt and output lengths uniform in [100, 1024], random token ids < 10000,
ignore_eos, seed 0 (nano-vllm's bench: 142,827 prompt and 133,966 output tokens), random weights in
the Qwen3-0.6B shape. Greedy sampling (argmax on the device); fastpage eager and with CUDA graphs.

HF generates for a subset of the requests (the first --hf-requests, left-padded into one batch,
each batch member generating the subset's longest output); its tok/s counts only the tokens the
requests asked for. Writes JSON rows {"device", "engine", "workload", "output_tok_per_s", ...}.

Usage (on the GPU machine): python bench/device/throughput_gpu.py --out results.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from random import randint, seed

import torch

sys.path.insert(0, os.path.dirname(__file__))
from model_shapes import make_checkpoint  # noqa: E402

WORKLOAD = "nano-throughput-256req-100to1024-qwen3-0.6b"


def nano_workload(num_requests: int = 256, max_input_len: int = 1024, max_output_len: int = 1024):
    """nano-vllm's bench.py draws, in its order."""
    seed(0)
    prompts = [[randint(0, 10000) for _ in range(randint(100, max_input_len))] for _ in range(num_requests)]
    output_lens = [randint(100, max_output_len) for _ in range(num_requests)]
    return prompts, output_lens


def run_fastpage(path: str, prompts, output_lens, max_num_batched_tokens: int, enforce_eager: bool,
                 max_num_seqs: int = 256, kv_cache_dtype: str = "auto", async_scheduling: bool | None = None) -> dict:
    from fastpage import LLM

    llm = LLM(model=path, dtype="bfloat16", max_model_len=4096, max_num_seqs=max_num_seqs,
              max_num_batched_tokens=max_num_batched_tokens, gpu_memory_utilization=0.9,
              enforce_eager=enforce_eager, kv_cache_dtype=kv_cache_dtype, async_scheduling=async_scheduling)
    async_scheduling = llm.llm_engine.engine.async_scheduling  # resolved (None: on for one GPU)
    result = timed_greedy_generate(llm, prompts, output_lens)
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    return dict(engine="fastpage", **result, sampling="greedy", max_num_batched_tokens=max_num_batched_tokens,
                max_num_seqs=max_num_seqs, enforce_eager=enforce_eager, kv_cache_dtype=kv_cache_dtype,
                async_scheduling=async_scheduling)


def timed_greedy_generate(llm, prompts, output_lens, num_warmup: int = 8) -> dict:
    """Greedy, EOS ignored, token-id prompts: a short warm-up on the first prompts, then the whole
    workload timed; every request must produce exactly its output length."""
    from fastpage import SamplingParams

    warm = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, detokenize=False)
    llm.generate([{"prompt_token_ids": p} for p in prompts[:num_warmup]], warm, use_tqdm=False)
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, detokenize=False) for n in output_lens]
    torch.cuda.synchronize()
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    num_out = sum(len(o.outputs[0].token_ids) for o in outputs)
    assert num_out == sum(output_lens), (num_out, sum(output_lens))
    num_prompt = sum(map(len, prompts))
    stats = llm.llm_engine.get_stats()
    return dict(output_tok_per_s=num_out / elapsed, seconds=elapsed, num_requests=len(prompts), output_tokens=num_out,
                prompt_tokens=num_prompt, total_tok_per_s=(num_out + num_prompt) / elapsed,
                num_preemptions=stats["num_preemptions"], num_device_blocks=stats["num_device_blocks"])


@torch.no_grad()
def run_hf(model, prompts, output_lens) -> dict:
    width = max(map(len, prompts))
    input_ids = torch.zeros(len(prompts), width, dtype=torch.long)
    attention_mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding
        input_ids[i, width - len(p):] = torch.tensor(p)
        attention_mask[i, width - len(p):] = 1
    input_ids, attention_mask = input_ids.cuda(), attention_mask.cuda()
    max_new = max(output_lens)
    common = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    model.generate(input_ids=input_ids[:, -32:], attention_mask=attention_mask[:, -32:], max_new_tokens=4,
                   min_new_tokens=4, **common)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new,
                         min_new_tokens=max_new, **common)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    generated = (out.shape[1] - width) * len(prompts)
    useful = sum(output_lens)
    return dict(engine="hf-transformers", output_tok_per_s=useful / elapsed, seconds=elapsed,
                num_requests=len(prompts), output_tokens=useful, generated_tokens_incl_padding_waste=generated,
                generated_tok_per_s=generated / elapsed, sampling="greedy",
                note=f"first {len(prompts)} requests of the workload in one left-padded batch, "
                     f"max_new_tokens={max_new}; tok/s counts the requested tokens only")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--path", default="/tmp/fastpage_bench/qwen3-0.6b")
    parser.add_argument("--hf-requests", type=int, default=32)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--commit", default="unknown", help="the tree's commit (the GPU machine's copy has no .git)")
    args = parser.parse_args()

    prompts, output_lens = nano_workload()
    print(f"workload: {len(prompts)} requests, {sum(map(len, prompts))} prompt and {sum(output_lens)} output tokens")
    start = time.perf_counter()
    model = make_checkpoint("qwen3-0.6b", args.path)
    print(f"checkpoint written in {time.perf_counter() - start:.1f} s")
    device = torch.cuda.get_device_name()
    common = dict(device=device, commit=args.commit, workload=WORKLOAD,
                  model_shape="qwen3-0.6b (28 layers, random bf16 weights)",
                  ms_per_token=None)
    rows = []
    if not args.skip_hf:
        n = args.hf_requests
        hf = run_hf(model, prompts[:n], output_lens[:n])
        rows.append({**common, **hf})
        print(json.dumps(rows[-1]))
    del model
    gc.collect()
    torch.cuda.empty_cache()
    for enforce_eager in (True, False):
        ours = run_fastpage(args.path, prompts, output_lens, args.max_num_batched_tokens, enforce_eager)
        if not args.skip_hf:
            ours["ratio_vs_hf"] = ours["output_tok_per_s"] / rows[0]["output_tok_per_s"]
        rows.append({**common, **ours})
        print(json.dumps(rows[-1]))
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    for row in rows:
        mode = "" if row["engine"] != "fastpage" else (" eager" if row["enforce_eager"] else " graphs")
        print(f"{row['engine'] + mode:>22}: {row['output_tok_per_s']:9.1f} output tok/s ({row['num_requests']} requests, "
              f"{row['seconds']:.1f} s)")


if __name__ == "__main__":
    main()
