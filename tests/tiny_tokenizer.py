"""Tiny tokenizers trained in milliseconds with the tokenizers library, for tests that need a real
tokenizer without a model download: a byte-level BPE (GPT-2 / Llama 3 / Qwen style) whose small
vocabulary splits multi-byte characters across tokens, and a WordPiece one (its decoder puts spaces
between tokens)."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "Café, naïve, résumé — déjà vu. Größe, Straße, Ærø.",
    "日本語のテキスト、中文文本，한국어 텍스트。",
    "Emoji: 🙂🚀🎉 and math ∑∫√ and arrows ← → ↑.",
    "    indented code:\n\tdef f(x):\n\t\treturn x * 2  # comment\n",
    "Numbers 0123456789, punctuation ?!.,;:'\"()[]{}",
] * 4
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_level_bpe(vocab_size: int = 400, all_bytes: bool = True) -> PreTrainedTokenizerFast:
    """With all_bytes=False the alphabet is only the corpus' bytes, so the vocabulary can be as
    small as a tiny model's (256); ids 0, 1, 2 are <|endoftext|>, <|im_start|>, <|im_end|>."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if all_bytes else [])
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", unk_token="<|endoftext|>",
                                   chat_template=CHATML_TEMPLATE, clean_up_tokenization_spaces=False)


def word_piece() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]", "[CLS]", "[SEP]"])
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", clean_up_tokenization_spaces=False)
