"""Writes a random-weight Llama of a chosen shape, with a word-level tokenizer covering its whole
vocabulary (token i is the word "t<i>"), for benchmarks on machines that cannot download models.

  python bench/random_llama.py /tmp/llama-h256 --hidden-size 256 --num-layers 4 --vocab-size 10240
"""

from __future__ import annotations

import argparse

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--intermediate-size", type=int, default=None, help="default: 8/3 x hidden")
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--num-heads", type=int, default=8)
    parser.add_argument("--num-kv-heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=10240)
    parser.add_argument("--max-position-embeddings", type=int, default=4096)
    args = parser.parse_args()

    words = {f"t{i}": i for i in range(args.vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab=words, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="t0", eos_token="t1",
                            bos_token="t2").save_pretrained(args.out_dir)

    config = LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                         intermediate_size=args.intermediate_size or (8 * args.hidden_size) // 3,
                         num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads,
                         num_key_value_heads=args.num_kv_heads,
                         max_position_embeddings=args.max_position_embeddings,
                         bos_token_id=2, eos_token_id=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(args.out_dir)
    print(f"wrote {args.out_dir}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")


if __name__ == "__main__":
    main()
