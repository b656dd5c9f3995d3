"""Tensor parallel on one multi-GPU host: greedy parity against a reference, then throughput, with
random weights in a real model's shape (load_format="dummy": each rank makes only its own shard).

  # 2 GPUs, Llama-3-8B shape: TP=2 against TP=1, throughput at both
  python bench/device/tp_gpu.py --shape llama-3-8b --tp 1 2 --reference first --out tp_8b.json
  # 4 GPUs, Llama-3-70B shape: TP=4 against HF transformers spread over the 4 GPUs
  python bench/device/tp_gpu.py --shape llama-3-70b --tp 4 --reference hf --out tp_70b.json

Parity: mixed-length prompts, 32 greedy tokens each. A prompt passes when its tokens equal the
reference's, or when the first difference is a near-tie: the reference's logprobs of the two tokens
differ by at most max(--tie-nats, twice the logprob noise between the two runs where they still agree;
bf16 sums in another order move the logits by a few bf16 steps).
Rows {"device", "engine", "workload", "output_tok_per_s", "ms_per_token", ...} go to --out.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from model_shapes import hf_config, write_config_dir  # noqa: E402
from throughput_gpu import nano_workload, timed_greedy_generate  # noqa: E402

PARITY_PROMPT_LENS = (7, 33, 100, 250, 512, 1000, 64, 1500)
PARITY_TOKENS = 32


def random_prompts(lengths, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(10000) for _ in range(n)] for n in lengths]


def worker_pids() -> list[int]:
    """Processes still running fastpage's worker module (none may outlive an engine)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"fastpage.distributed.worker" in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def free_gpus() -> None:
    gc.collect()
    for i in range(torch.cuda.device_count()):
        with torch.cuda.device(i):
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- reference: HF


def hf_model_across_gpus(path: str, config, devices: list[str]):
    """HF's model with the dummy weights, layers split evenly over `devices` (pre-hooks move each
    module's inputs to its device, as accelerate's device_map does)."""
    from transformers import AutoModelForCausalLM

    from fastpage.model_loader import read_model_config
    from fastpage.model_loader.dummy_weights import hf_state_dict_tensor

    model_config, _ = read_model_config(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    num_layers = config.num_hidden_layers
    inner = model.model

    def place(module, device: str) -> None:
        module.to_empty(device=device)
        module.register_forward_pre_hook(lambda m, args, kwargs: _to(device, args, kwargs), with_kwargs=True)

    place(inner.embed_tokens, devices[0])
    for i, layer in enumerate(inner.layers):
        place(layer, devices[i * len(devices) // num_layers])
    place(inner.norm, devices[-1])
    place(model.lm_head, devices[-1])
    with torch.device(devices[0]):  # its inv_freq buffer was computed on the meta device
        inner.rotary_emb = type(inner.rotary_emb)(config=config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(hf_state_dict_tensor(model_config, name, torch.bfloat16, param.device))
    return model


def _to(device: str, args, kwargs):
    def move(x):
        if isinstance(x, torch.Tensor):
            return x.to(device)
        if isinstance(x, tuple):
            return tuple(move(y) for y in x)
        return x

    return tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}


@torch.no_grad()
def hf_greedy_with_logprobs(model, prompts, device: str = "cuda:0") -> list[tuple[list[int], list[torch.Tensor]]]:
    results = []
    for prompt in prompts:
        out = model(torch.tensor([prompt], device=device), use_cache=True)
        tokens, rows = [], []
        for _ in range(PARITY_TOKENS):
            row = torch.log_softmax(out.logits[0, -1].float(), dim=-1).cpu()
            rows.append(row)
            tokens.append(int(row.argmax()))
            out = model(torch.tensor([[tokens[-1]]], device=device), past_key_values=out.past_key_values,
                        use_cache=True)
        results.append((tokens, rows))
    return results


# ----------------------------------------------------------------------------- fastpage


def make_llm(path: str, tp: int, args):
    from fastpage import LLM

    return LLM(model=path, load_format="dummy", dtype="bfloat16", tensor_parallel_size=tp,
               max_model_len=args.max_model_len, max_num_seqs=256, gpu_memory_utilization=0.9,
               max_num_batched_tokens=args.max_num_batched_tokens, enforce_eager=args.enforce_eager)


def fastpage_greedy(llm, prompts, logprobs: int):
    from fastpage import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=PARITY_TOKENS, ignore_eos=True, detokenize=False,
                            logprobs=logprobs)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [(list(o.outputs[0].token_ids), o.outputs[0].logprobs) for o in outputs]


def reference_logprob(reference, step: int, token: int) -> float | None:
    """The reference's logprob of `token` at `step` (None where its top logprobs leave it out)."""
    row = reference[1][step]
    if isinstance(row, torch.Tensor):
        return float(row[token])
    return row[token].logprob if token in row else None


def logprob_noise(ours, reference, last_step: int, skip: tuple[int, ...] = ()) -> float:
    """Largest |our logprob - the reference's| over our top tokens at steps 0..last_step (leaving out
    the tokens `skip` at last_step): how far apart the two runs' numbers sit where the inputs agree."""
    diffs = [0.0]
    for step in range(last_step + 1):
        for token, entry in ours[1][step].items():
            theirs = reference_logprob(reference, step, token)
            if theirs is not None and not (step == last_step and token in skip):
                diffs.append(abs(entry.logprob - theirs))
    return max(diffs)


def compare(name: str, ours, reference, prompts, tie_nats: float) -> dict:
    """Per prompt: identical, or the first difference is a near-tie: the reference's logprobs of the
    two tokens differ by at most max(tie_nats, 2 x the logprob noise measured between the runs)."""
    identical, near_ties, failures, noises = 0, [], [], []
    for prompt, mine, ref in zip(prompts, ours, reference):
        tokens = mine[0]
        first = next((i for i, (a, b) in enumerate(zip(tokens, ref[0])) if a != b), None)
        noise = (logprob_noise(mine, ref, len(tokens) - 1) if first is None
                 else logprob_noise(mine, ref, first, skip=(tokens[first], ref[0][first])))
        noises.append(noise)
        if first is None:
            identical += 1
            continue
        ours_lp = reference_logprob(ref, first, tokens[first])
        gap = None if ours_lp is None else reference_logprob(ref, first, ref[0][first]) - ours_lp
        entry = dict(prompt_len=len(prompt), first_difference=first, reference_gap_nats=gap, noise_nats=noise)
        (near_ties if gap is not None and gap <= max(tie_nats, 2 * noise) else failures).append(entry)
    print(f"{name}: {identical}/{len(prompts)} identical, near-ties {near_ties}, failures {failures}, "
          f"max logprob noise {max(noises):.4f}")
    return dict(identical=identical, num_prompts=len(prompts), near_ties=near_ties, failures=failures,
                max_logprob_noise_nats=max(noises))


def throughput(llm, workload: str) -> dict:
    if workload == "nano":
        prompts, output_lens = nano_workload()
    else:  # "1000x1000"
        prompts = random_prompts([1000] * 1000, seed=1)
        output_lens = [1000] * 1000
    return timed_greedy_generate(llm, prompts, output_lens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama-3-8b")
    parser.add_argument("--num-layers", type=int, default=None, help="cut the shape to this many layers")
    parser.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reference", choices=["first", "hf"], default="first",
                        help="first: the first --tp size is the reference; hf: HF transformers over all GPUs")
    parser.add_argument("--workloads", nargs="*", default=["nano"], choices=["nano", "1000x1000"])
    parser.add_argument("--tie-nats", type=float, default=0.1)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--path", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    cut = "" if args.num_layers is None else f"-{args.num_layers}layers"
    path = write_config_dir(args.shape, args.path or f"/tmp/fastpage_bench/{args.shape}{cut}-config", args.num_layers)
    device = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name()}"
    prompts = random_prompts(PARITY_PROMPT_LENS, seed=7)
    rows, parity = [], {}
    reference = None
    if args.reference == "hf":
        start = time.perf_counter()
        model = hf_model_across_gpus(path, hf_config(args.shape, args.num_layers),
                                     [f"cuda:{i}" for i in range(torch.cuda.device_count())])
        reference = hf_greedy_with_logprobs(model, prompts)
        print(f"HF reference over {torch.cuda.device_count()} GPUs: {time.perf_counter() - start:.1f} s")
        del model
        free_gpus()
    for tp in args.tp:
        start = time.perf_counter()
        llm = make_llm(path, tp, args)
        print(f"TP={tp}: engine up in {time.perf_counter() - start:.1f} s")
        ours = fastpage_greedy(llm, prompts, logprobs=5)
        if reference is None:
            reference = ours
            parity[f"tp{tp}"] = "reference"
        else:
            parity[f"tp{tp}"] = compare(f"TP={tp}", ours, reference, prompts, args.tie_nats)
        for workload in args.workloads:
            result = throughput(llm, workload)
            name = ("nano-throughput-256req-100to1024" if workload == "nano" else "1000req-1000in-1000out")
            rows.append(dict(device=device, engine="fastpage", workload=f"{name}-{args.shape}-tp{tp}",
                             tensor_parallel_size=tp, ms_per_token=None, sampling="greedy",
                             cuda_graphs=not args.enforce_eager and tp == 1,  # off with world size > 1
                             weights="random bf16 (load_format=dummy)",
                             **result))
            print(json.dumps(rows[-1]))
        del llm
        free_gpus()
        time.sleep(1)
        left = worker_pids()
        print(f"TP={tp}: worker processes left after shutdown: {left}")
        parity[f"tp{tp}_workers_left"] = left
    with open(args.out, "w") as f:
        json.dump(dict(device=device, shape=args.shape + cut, rows=rows, parity=parity, tie_nats=args.tie_nats),
                  f, indent=1)
    failed = any(isinstance(p, dict) and p["failures"] for p in parity.values()) or any(
        v for k, v in parity.items() if k.endswith("workers_left"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
