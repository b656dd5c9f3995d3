"""CPU benchmark: fastpage against llama.cpp (llama-cpp-python) and HF transformers on SmolLM2-135M.

Same model, same precision on every side: fastpage dequantizes the GGUF to the dtype asked for, so
llama.cpp runs an F32/F16/BF16 copy of the file written here with the gguf package, and
transformers loads the same GGUF dequantized. Workloads (issue 4):
  decode   batch 1, 128 generated tokens after a 16-token prompt: decode tok/s
  prefill  one 512-token prompt, 1 output token: prefill tok/s
  batch    64 requests, prompts uniform in [50, 300], outputs uniform in [100, 300], random token
           ids < 10000, ignore_eos, seed 0: output tok/s and total tok/s
llama.cpp runs the batch workload as llama-batched-bench does: every request is its own sequence
of one unified KV cache (F32 for f32 runs, as fastpage's), prompts prefilled in 512-token ubatches,
then all sequences decoded together, one token each per llama_decode, greedy. Prints a table and
writes bench/results/cpu_vs_llamacpp.json.

    pip install llama-cpp-python          # builds llama.cpp from source (a few minutes)
    python bench/cpu_vs_llamacpp.py --precisions f32 --peers fastpage,llamacpp,hf
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from typing import Callable

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "cpu_vs_llamacpp.json")
CACHE = "/tmp/fastpage-bench"  # model copies: large, never committed
DECODE_PROMPT_LEN, DECODE_TOKENS, PREFILL_LEN = 16, 128, 512
TORCH_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
KV_TYPES = {"f32": 0, "f16": 1, "bf16": 30}  # ggml_type of the llama.cpp KV cache


# --- workloads ------------------------------------------------------------------------------------------

def random_prompt(rng: random.Random, length: int) -> list[int]:
    return [rng.randrange(10000) for _ in range(length)]


def batch_workload(num_requests: int, seed: int = 0) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [(random_prompt(rng, rng.randint(50, 300)), rng.randint(100, 300)) for _ in range(num_requests)]


# --- model copies at one precision -----------------------------------------------------------------------

def float_copy(source: str, precision: str) -> str:
    """The GGUF rewritten with 2-D tensors in F32/F16/BF16 (norms stay F32); cached under /tmp."""
    import gguf
    from fastpage.model_loader.gguf_file import GGUFFile

    target = os.path.join(CACHE, os.path.basename(source).replace(".gguf", f".{precision.upper()}.gguf"))
    if os.path.exists(target):
        return target
    os.makedirs(CACHE, exist_ok=True)
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16}[precision]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16}[precision]
    reader = gguf.GGUFReader(source)  # slow on a large vocabulary, but it keeps every value's type
    writer = gguf.GGUFWriter(target + ".partial", reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = file_type if name == "general.file_type" else field.contents()
        sub_type = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, field.types[0], sub_type=sub_type)
    tensors = GGUFFile(source)
    for name, info in tensors.tensors.items():
        values = tensors.load_array(name)
        if values.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(target + ".partial", target)
    return target


# --- fastpage ------------------------------------------------------------------------------------------

def bench_fastpage(model: str, precision: str, workload, threads: int) -> dict:
    import torch

    import fastpage

    torch.set_num_threads(threads)
    # A KV cache that holds the whole batch workload at once, as llama.cpp's context does.
    llm = fastpage.LLM(model=model, dtype=TORCH_DTYPES[precision], device="cpu", enable_prefix_caching=False,
                       kv_cache_memory_bytes=3 << 30)
    engine = llm.llm_engine
    rng = random.Random(1)

    def timed_request(prompt: list[int], max_tokens: int) -> tuple[float, float, int]:
        """(time to the first token, time to the last, tokens) for one request alone."""
        params = fastpage.SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        start, first, num_tokens = time.perf_counter(), None, 0
        engine.add_request("bench", {"prompt_token_ids": prompt}, params)
        while engine.has_unfinished_requests():
            for output in engine.step():
                num_tokens = len(output.outputs[0].token_ids)
                if first is None and num_tokens:
                    first = time.perf_counter()
        return first - start, time.perf_counter() - start, num_tokens

    timed_request(random_prompt(rng, 32), 8)  # warm-up
    ttft, total, num_tokens = timed_request(random_prompt(rng, DECODE_PROMPT_LEN), DECODE_TOKENS)
    decode = (num_tokens - 1) / (total - ttft)
    prefill_time, _, _ = timed_request(random_prompt(rng, PREFILL_LEN), 1)
    params = [fastpage.SamplingParams(temperature=0.0, max_tokens=out, ignore_eos=True) for _, out in workload]
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p, _ in workload], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    num_out = sum(len(o.outputs[0].token_ids) for o in outputs)
    return dict(decode_tok_s=decode, prefill_tok_s=PREFILL_LEN / prefill_time, batch_seconds=elapsed,
                batch_output_tok_s=num_out / elapsed,
                batch_total_tok_s=(num_out + sum(len(p) for p, _ in workload)) / elapsed)


# --- llama.cpp -----------------------------------------------------------------------------------------

def bench_llamacpp(model: str, precision: str, workload, threads: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=model, n_ctx=2048, n_batch=512, n_threads=threads, n_threads_batch=threads,
                type_k=KV_TYPES[precision], type_v=KV_TYPES[precision], verbose=False)
    rng = random.Random(1)

    def run(prompt: list[int], max_tokens: int) -> tuple[float, float]:
        """(prefill seconds, decode seconds) for greedy generation that ignores EOS."""
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        token = llm.sample(temp=0.0)
        prefilled = time.perf_counter()
        for _ in range(max_tokens - 1):
            llm.eval([token])
            token = llm.sample(temp=0.0)
        return prefilled - start, time.perf_counter() - prefilled

    run(random_prompt(rng, 32), 8)  # warm-up
    _, decode_time = run(random_prompt(rng, DECODE_PROMPT_LEN), DECODE_TOKENS)
    prefill_time, _ = run(random_prompt(rng, PREFILL_LEN), 1)
    del llm
    elapsed = llamacpp_batched(model, precision, workload, threads)
    num_out = sum(out for _, out in workload)
    return dict(decode_tok_s=(DECODE_TOKENS - 1) / decode_time, prefill_tok_s=PREFILL_LEN / prefill_time,
                batch_seconds=elapsed, batch_output_tok_s=num_out / elapsed,
                batch_total_tok_s=(num_out + sum(len(p) for p, _ in workload)) / elapsed)


def llamacpp_batched(model: str, precision: str, workload, threads: int, n_batch: int = 2048) -> float:
    """Seconds for the whole workload as parallel sequences of one llama.cpp context (greedy)."""
    import ctypes

    import llama_cpp as lc
    import numpy as np

    model_ptr = lc.llama_model_load_from_file(model.encode(), lc.llama_model_default_params())
    params = lc.llama_context_default_params()
    params.n_ctx = sum(len(p) + out for p, out in workload) + 256
    params.n_batch, params.n_ubatch = n_batch, 512
    params.n_seq_max, params.kv_unified = len(workload), True
    params.type_k = params.type_v = KV_TYPES[precision]
    params.n_threads = params.n_threads_batch = threads
    ctx = lc.llama_init_from_model(model_ptr, params)
    n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model_ptr))
    batch = lc.llama_batch_init(n_batch, 0, 1)

    def decode(entries: list[tuple[int, int, int, bool]]) -> None:
        """entries: (token, position, sequence, wants logits)."""
        batch.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
            batch.seq_id[i][0] = seq
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def argmax(i: int) -> int:
        logits = ctypes.cast(lc.llama_get_logits_ith(ctx, i), ctypes.POINTER(ctypes.c_float))
        return int(np.ctypeslib.as_array(logits, shape=(n_vocab,)).argmax())

    start = time.perf_counter()
    # Prefill: every prompt token in n_batch chunks; the last token of each prompt gives logits.
    pending = [(t, pos, seq, pos == len(p) - 1) for seq, (p, _) in enumerate(workload) for pos, t in enumerate(p)]
    next_token: dict[int, int] = {}
    for begin in range(0, len(pending), n_batch):
        chunk = pending[begin:begin + n_batch]
        decode(chunk)
        for i, (_, _, seq, logits) in enumerate(chunk):
            if logits:
                next_token[seq] = argmax(i)
    # Decode: all unfinished sequences together, one token each.
    generated = {seq: 1 for seq in range(len(workload))}
    while True:
        active = [seq for seq in range(len(workload)) if generated[seq] < workload[seq][1]]
        if not active:
            break
        decode([(next_token[seq], len(workload[seq][0]) + generated[seq] - 1, seq, True) for seq in active])
        for i, seq in enumerate(active):
            next_token[seq] = argmax(i)
            generated[seq] += 1
    elapsed = time.perf_counter() - start
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    lc.llama_model_free(model_ptr)
    return elapsed


# --- HF transformers -----------------------------------------------------------------------------------

def bench_hf(model: str, precision: str, workload, threads: int, batch_size: int) -> dict:
    import torch
    import transformers

    torch.set_num_threads(threads)
    directory, name = os.path.split(model)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=getattr(torch, TORCH_DTYPES[precision])).eval()
    rng = random.Random(1)

    @torch.no_grad()
    def generate(prompts: list[list[int]], max_tokens: int) -> None:
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                    do_sample=False, pad_token_id=0)

    generate([random_prompt(rng, 32)], 8)  # warm-up
    start = time.perf_counter()
    generate([random_prompt(rng, DECODE_PROMPT_LEN)], 1)
    first = time.perf_counter() - start
    start = time.perf_counter()
    generate([random_prompt(rng, DECODE_PROMPT_LEN)], DECODE_TOKENS)
    decode = (DECODE_TOKENS - 1) / (time.perf_counter() - start - first)
    start = time.perf_counter()
    generate([random_prompt(rng, PREFILL_LEN)], 1)
    prefill = PREFILL_LEN / (time.perf_counter() - start)
    # Batches of similar prompt length; each runs to its longest output, only requested tokens count.
    ordered = sorted(workload, key=lambda item: len(item[0]))
    start = time.perf_counter()
    for i in range(0, len(ordered), batch_size):
        chunk = ordered[i:i + batch_size]
        generate([p for p, _ in chunk], max(out for _, out in chunk))
    elapsed = time.perf_counter() - start
    num_out = sum(out for _, out in workload)
    return dict(decode_tok_s=decode, prefill_tok_s=prefill, batch_seconds=elapsed, batch_size=batch_size,
                batch_output_tok_s=num_out / elapsed,
                batch_total_tok_s=(num_out + sum(len(p) for p, _ in workload)) / elapsed)


# --- driver ---------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a GGUF file (default: SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--precisions", default="f32,f16,bf16", help="comma list of f32, f16, bf16")
    parser.add_argument("--peers", default="fastpage,llamacpp,hf", help="comma list of fastpage, llamacpp, hf")
    parser.add_argument("--num-requests", type=int, default=64, help="batch workload size")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every peer")
    parser.add_argument("--hf-batch-size", type=int, default=8)
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args()

    from fastpage.model_loader.default_model import default_model_path

    source = args.model or default_model_path()
    workload = batch_workload(args.num_requests)
    peers: dict[str, Callable[[str, str], dict]] = {
        "fastpage": lambda model, precision: bench_fastpage(model, precision, workload, args.threads),
        "llamacpp": lambda model, precision: bench_llamacpp(model, precision, workload, args.threads),
        "hf": lambda model, precision: bench_hf(model, precision, workload, args.threads, args.hf_batch_size),
    }
    results = []
    for precision in args.precisions.split(","):
        if precision not in TORCH_DTYPES:
            raise ValueError(f"--precisions: unknown precision {precision!r} (f32, f16, bf16)")
        model = float_copy(source, precision)
        for peer in args.peers.split(","):
            if peer not in peers:
                raise ValueError(f"--peers: unknown peer {peer!r} ({', '.join(peers)})")
            print(f"{peer} {precision} ...", flush=True)
            figures = peers[peer](model, precision)
            results.append(dict(peer=peer, precision=precision, **figures))
            print("  " + ", ".join(f"{k}={v:.1f}" for k, v in figures.items()), flush=True)

    print(f"\n{'peer':10} {'prec':5} {'decode tok/s':>13} {'prefill tok/s':>14} {'batch out tok/s':>16}")
    for r in results:
        print(f"{r['peer']:10} {r['precision']:5} {r['decode_tok_s']:13.1f} {r['prefill_tok_s']:14.1f} "
              f"{r['batch_output_tok_s']:16.1f}")
    ratios = {}
    for precision in {r["precision"] for r in results}:
        by_peer = {r["peer"]: r for r in results if r["precision"] == precision}
        if "fastpage" in by_peer:
            for peer, r in by_peer.items():
                if peer != "fastpage":
                    ratios[f"{precision}: fastpage/{peer}"] = {
                        key: by_peer["fastpage"][key] / r[key]
                        for key in ("decode_tok_s", "prefill_tok_s", "batch_output_tok_s")}
    for name, ratio in sorted(ratios.items()):
        print(f"{name}: " + ", ".join(f"{k} x{v:.2f}" for k, v in ratio.items()))
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(dict(machine=dict(platform=platform.platform(), processor=platform.processor(),
                                    cpus=os.cpu_count(), threads=args.threads),
                       model=os.path.basename(source), num_requests=args.num_requests,
                       results=results, ratios=ratios), f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
