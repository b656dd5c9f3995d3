"""Offline throughput: fastpage's LLM.generate on token-id prompts, or the same workload through HF
transformers `generate` as the peer.

The reference workload (DESIGN.md): 256 requests, prompt lengths uniform in [100, 1024], output
lengths uniform in [100, 1024], random token ids, ignore_eos, seed 0: 142,827 prompt and 133,966
output tokens. The lengths and ids are drawn in nano-vllm's order with Python's `random`
(ids from randint(0, 10000)), which is what gives those counts. Flags scale it down for the CPU.

    python bench/throughput.py --num-prompts 32 --input-len 50 300 --output-len 100 300
    python bench/throughput.py --engine hf --num-prompts 32 --input-len 50 300 --output-len 100 300

The peer: transformers batches `--hf-batch-size` requests of similar prompt length, left-padded,
greedy, each batch generating its longest output (min_new_tokens keeps EOS away, as ignore_eos
does); only the tokens each request asked for are counted. Prints requests/s, output tok/s and
total tok/s and appends a JSON row to bench/results/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def make_workload(num_prompts: int, input_len: tuple[int, int], output_len: tuple[int, int], seed: int,
                  max_token_id: int = 10000) -> list[tuple[list[int], int]]:
    """[(prompt token ids, output length)] drawn in nano-vllm's order (all prompts, then all outputs)."""
    rng = random.Random(seed)
    prompts = [[rng.randint(0, max_token_id) for _ in range(rng.randint(*input_len))] for _ in range(num_prompts)]
    outputs = [rng.randint(*output_len) for _ in range(num_prompts)]
    return list(zip(prompts, outputs))


def run_fastpage(args, workload) -> dict:
    import fastpage

    llm = fastpage.LLM(model=args.model, dtype=args.dtype, device="cpu" if args.device == "cpu" else "auto",
                       max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                       enable_prefix_caching=False, kv_cache_memory_bytes=args.kv_cache_bytes, seed=args.seed)
    params = [fastpage.SamplingParams(temperature=args.temperature, max_tokens=out, ignore_eos=True,
                                      detokenize=not args.no_detokenize)
              for _, out in workload]
    prompts = [{"prompt_token_ids": p} for p, _ in workload]
    llm.generate(prompts[:2], [fastpage.SamplingParams(max_tokens=4, ignore_eos=True)] * 2, use_tqdm=False)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=args.tqdm)
    elapsed = time.perf_counter() - start
    num_output = sum(len(o.outputs[0].token_ids) for o in outputs)
    # Time per output token of each request after its first (TPOT), averaged over requests.
    tpot = [(o.metrics.finished_time - o.metrics.first_token_time) / (len(o.outputs[0].token_ids) - 1)
            for o in outputs if len(o.outputs[0].token_ids) > 1]
    return dict(elapsed_s=elapsed, num_output_tokens=num_output,
                ms_per_token=1000 * statistics.mean(tpot) if tpot else None,
                max_num_seqs=args.max_num_seqs, stats=llm.llm_engine.get_stats())


def run_hf(args, workload) -> dict:
    import torch
    import transformers

    if args.model.endswith(".gguf"):
        directory, name = os.path.split(args.model)
        model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name,
                                                                  dtype=getattr(torch, args.dtype))
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    model = model.to(args.device).eval()
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    @torch.inference_mode()
    def generate(prompts: list[list[int]], max_new_tokens: int) -> None:
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=args.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=args.device)
        sampling = dict(do_sample=True, temperature=args.temperature, top_k=0, top_p=1.0) \
            if args.temperature > 0 else dict(do_sample=False)
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                       min_new_tokens=max_new_tokens, pad_token_id=pad, **sampling)

    generate([workload[0][0][:16]], 4)  # warm-up
    ordered = sorted(workload, key=lambda item: len(item[0]))
    step_ms = []
    start = time.perf_counter()
    for i in range(0, len(ordered), args.hf_batch_size):
        chunk = ordered[i:i + args.hf_batch_size]
        longest = max(out for _, out in chunk)
        batch_start = time.perf_counter()
        generate([p for p, _ in chunk], longest)
        step_ms.append(1000 * (time.perf_counter() - batch_start) / longest)
    elapsed = time.perf_counter() - start
    return dict(elapsed_s=elapsed, num_output_tokens=sum(out for _, out in workload),
                ms_per_token=statistics.mean(step_ms), hf_batch_size=args.hf_batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["fastpage", "hf"], default="fastpage")
    parser.add_argument("--model", default=None, help="HF directory or .gguf (default: the bundled SmolLM2)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--input-len", type=int, nargs=2, default=[100, 1024], metavar=("MIN", "MAX"))
    parser.add_argument("--output-len", type=int, nargs=2, default=[100, 1024], metavar=("MIN", "MAX"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (both engines)")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--kv-cache-bytes", type=int, default=None, help="fastpage KV-cache size (CPU default 1 GiB)")
    parser.add_argument("--no-detokenize", action="store_true", help="fastpage: skip incremental detokenization")
    parser.add_argument("--hf-batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--tqdm", action="store_true")
    parser.add_argument("--workload", default=None, help="name for the JSON row (default: from the flags)")
    parser.add_argument("--output", default=os.path.join(RESULTS_DIR, "throughput.json"))
    args = parser.parse_args()
    for name in ("input_len", "output_len"):
        low, high = getattr(args, name)
        if not 1 <= low <= high:
            raise ValueError(f"--{name.replace('_', '-')}: need 1 <= MIN <= MAX, got {low} {high}")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is None:
        from fastpage.model_loader.default_model import default_model_path

        args.model = default_model_path()
    workload = make_workload(args.num_prompts, tuple(args.input_len), tuple(args.output_len), args.seed)
    num_prompt_tokens = sum(len(p) for p, _ in workload)
    print(f"{args.engine}: {len(workload)} requests, {num_prompt_tokens} prompt tokens, "
          f"{sum(out for _, out in workload)} output tokens", flush=True)

    result = (run_fastpage if args.engine == "fastpage" else run_hf)(args, workload)
    elapsed = result.pop("elapsed_s")
    row = dict(
        device=f"cpu: {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
               if args.device == "cpu" else args.device,
        engine=args.engine,
        workload=args.workload or (f"{args.num_prompts} req, in {args.input_len[0]}-{args.input_len[1]}, "
                                   f"out {args.output_len[0]}-{args.output_len[1]}, seed {args.seed}"),
        model=os.path.basename(args.model.rstrip("/")), dtype=args.dtype,
        output_tok_per_s=result["num_output_tokens"] / elapsed,
        total_tok_per_s=(result["num_output_tokens"] + num_prompt_tokens) / elapsed,
        requests_per_s=len(workload) / elapsed,
        elapsed_s=elapsed, num_prompt_tokens=num_prompt_tokens, temperature=args.temperature,
        load_avg_1m=os.getloadavg()[0], time=time.strftime("%Y-%m-%dT%H:%M:%S"), **result)
    print(f"{args.engine}: {row['requests_per_s']:.2f} requests/s, {row['output_tok_per_s']:.1f} output tok/s, "
          f"{row['total_tok_per_s']:.1f} total tok/s, {elapsed:.1f} s"
          + (f", {row['ms_per_token']:.1f} ms/token" if row.get("ms_per_token") else ""))
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    rows = []
    if os.path.exists(args.output):
        with open(args.output) as f:
            rows = json.load(f)
    rows.append(row)
    with open(args.output, "w") as f:
        json.dump(rows, f, indent=2)
    print(f"appended to {args.output}")


if __name__ == "__main__":
    main()
