"""The model's tokenizer: an HF fast tokenizer plus what fastpage needs around it (eos ids, chat
template rendering in the sandbox, cached single-token text for logprobs)."""

from __future__ import annotations

from typing import Any


class Tokenizer:
    def __init__(self, hf_tokenizer, eos_token_ids: list[int] | None = None,
                 chat_template: str | dict | None = None):
        self.hf = hf_tokenizer
        if eos_token_ids:
            self.eos_token_ids = list(eos_token_ids)
        else:
            self.eos_token_ids = [] if hf_tokenizer.eos_token_id is None else [hf_tokenizer.eos_token_id]
        self.chat_template = chat_template if chat_template is not None else hf_tokenizer.chat_template
        self.vocab_size = len(hf_tokenizer)  # including added tokens
        self.added_token_ids = frozenset(hf_tokenizer.added_tokens_decoder)
        self._token_text: dict[int, str] = {}
        self._rust_decoder = _rust_decoder(hf_tokenizer)

    @property
    def eos_token_id(self) -> int | None:
        return self.eos_token_ids[0] if self.eos_token_ids else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.hf.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        # No clean-up of tokenization spaces: generated text must be the concatenation of its
        # incremental pieces (vLLM does the same).
        if self._rust_decoder is not None and type(token_ids) is list:
            # What the fast tokenizer's decode does for a list without clean-up, minus its Python
            # layers (~10 us a call; the incremental detokenizer makes two calls per token).
            return self._rust_decoder.decode(token_ids, skip_special_tokens=skip_special_tokens)
        return self.hf.decode(token_ids, skip_special_tokens=skip_special_tokens,
                              clean_up_tokenization_spaces=False)

    def decode_batch(self, sequences: list[list[int]], skip_special_tokens: bool = False) -> list[str]:
        """decode() of each sequence, in one call into the Rust tokenizer where there is one."""
        if self._rust_decoder is not None:
            return self._rust_decoder.decode_batch(sequences, skip_special_tokens=skip_special_tokens)
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in sequences]

    def token_text(self, token_id: int) -> str:
        """One token's text (special tokens included), as shown in logprobs."""
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.decode([token_id])
        return text

    def convert_ids_to_tokens(self, token_ids: list[int]) -> list[str]:
        return self.hf.convert_ids_to_tokens(token_ids)

    def special_tokens_map(self) -> dict[str, str]:
        return dict(self.hf.special_tokens_map)

    def apply_chat_template(self, messages: list[dict[str, Any]], *, chat_template: str | None = None,
                            tools: list[dict[str, Any]] | None = None,
                            documents: list[dict[str, Any]] | None = None,
                            add_generation_prompt: bool = False, continue_final_message: bool = False,
                            chat_template_kwargs: dict[str, Any] | None = None,
                            tokenize: bool = False) -> str | list[int]:
        """Renders one conversation with the model's (or the given) template; with tokenize=True,
        returns its token ids (the template adds the special tokens itself)."""
        from fastpage.chat_template import render_chat, resolve_chat_template

        template = resolve_chat_template(chat_template, self.chat_template, tools)
        text = render_chat(messages, template, tools=tools, documents=documents,
                           add_generation_prompt=add_generation_prompt,
                           continue_final_message=continue_final_message,
                           chat_template_kwargs=chat_template_kwargs,
                           special_tokens=self.special_tokens_map())
        return self.encode(text, add_special_tokens=False) if tokenize else text


def _rust_decoder(hf_tokenizer):
    """The tokenizers.Tokenizer behind a transformers fast tokenizer whose decode is the stock one
    (which, without clean-up, returns exactly what the Rust tokenizer decodes); else None."""
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        return None
    stock = getattr(PreTrainedTokenizerFast, "_decode", None)
    if stock is None or getattr(type(hf_tokenizer), "_decode", None) is not stock:
        return None
    if type(hf_tokenizer).decode is not PreTrainedTokenizerFast.decode:
        return None
    return getattr(hf_tokenizer, "_tokenizer", None)


def load_tokenizer(source: str, eos_token_ids: list[int] | None = None,
                   chat_template: str | dict | None = None) -> Tokenizer:
    """Loads the tokenizer of an HF model directory (or hub-style name in the local cache),
    or of a GGUF file. The default model's gets a template for requests with tools beside its own."""
    from fastpage.model_loader.default_model import with_tools_template

    if source.endswith(".gguf"):
        from fastpage.model_loader.gguf import load_gguf_tokenizer

        hf_tokenizer = load_gguf_tokenizer(source)
    else:
        from transformers import AutoTokenizer

        hf_tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer = Tokenizer(as_hf_tokenizer(hf_tokenizer), eos_token_ids, chat_template)
    tokenizer.chat_template = with_tools_template(source, tokenizer.chat_template)
    return tokenizer


def as_hf_tokenizer(tokenizer):
    """Accepts a transformers tokenizer or a bare tokenizers.Tokenizer (wrapped as a fast tokenizer)."""
    from tokenizers import Tokenizer as RustTokenizer

    if isinstance(tokenizer, RustTokenizer):
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(tokenizer_object=tokenizer)
    return tokenizer
