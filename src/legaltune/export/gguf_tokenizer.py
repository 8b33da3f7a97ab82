"""The tokenizer of a GGUF file, under llama.cpp's keys, from a Hugging Face ``tokenizer.json``.

Two of llama.cpp's tokenizer models cover the families legaltune exports:

* ``gpt2`` for byte-level BPE (Llama 3, Qwen2, SmolLM2): the vocabulary, the merges and the name of
  the pre-tokenizer, by which llama.cpp picks its split regex.
* ``llama`` for SentencePiece-style BPE with byte fallback (Gemma 3, and Llama 2 / Mistral
  tokenizers): spaces are ``▁``, unknown characters fall back to ``<0xNN>`` byte tokens, and
  llama.cpp merges by *score* — at each step the adjacent pair whose concatenation has the highest
  score. A ``tokenizer.json`` keeps merges, not scores; a token's score here is minus the rank of
  the first merge that makes it, so "highest score" is "earliest merge", the order Hugging Face's
  BPE applies (``tests/test_gguf_llamacpp.py`` checks llama.cpp's ids against transformers' on
  Vietnamese text).
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import gguf

from legaltune.export.merge import ExportError

# Llama-3's pre-tokenizer split, as its tokenizer.json writes it; llama.cpp calls it "llama-bpe".
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")  # Qwen2/2.5 split digits one by one
SPACE = "\u2581"  # SentencePiece's visible space


def tokenizer_kind(spec: dict[str, Any]) -> str:
    """``"gpt2"`` or ``"llama"`` (llama.cpp's tokenizer model) for a parsed ``tokenizer.json``."""
    model = spec.get("model") or {}
    decoder = json.dumps(spec.get("decoder"), ensure_ascii=False)
    if model.get("type") == "BPE" and "ByteLevel" in decoder:
        return "gpt2"
    if model.get("type") == "BPE" and model.get("byte_fallback") and SPACE in decoder:
        return "llama"
    raise ExportError(
        f"the tokenizer is neither byte-level BPE nor SentencePiece-style BPE with byte fallback (model "
        f"{model.get('type')!r}); GGUF export writes llama.cpp's 'gpt2' tokenizer (Llama 3, Qwen2, SmolLM2) "
        "and 'llama' tokenizer (Gemma 3, Llama 2, Mistral)"
    )


def merge_scores(merges: list[Any]) -> dict[str, float]:
    """Token → minus the rank of the first merge producing it (llama.cpp's SentencePiece scores)."""
    scores: dict[str, float] = {}
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        scores.setdefault(left + right, -float(rank))
    return scores


def _is_byte_token(token: str) -> bool:
    return len(token) == 6 and token.startswith("<0x") and token.endswith(">")


def write_tokenizer(writer: gguf.GGUFWriter, tokenizer: Any, vocab_size: int, template: str | None) -> None:
    """Vocabulary, token types, merges or scores, special ids and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    kind = tokenizer_kind(spec)
    model = spec["model"]
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]  # rows of the embedding that no token uses
    types = [gguf.TokenType.UNUSED] * vocab_size
    for token, index in tokenizer.get_vocab().items():
        if index >= vocab_size:
            raise ExportError(f"token {token!r} has id {index} ≥ the model's vocab_size {vocab_size}")
        tokens[index], types[index] = token, gguf.TokenType.NORMAL
    if kind == "llama":
        for index, token in enumerate(tokens):
            if _is_byte_token(token):
                types[index] = gguf.TokenType.BYTE
    for index, added in tokenizer.added_tokens_decoder.items():
        types[index] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    unk = getattr(tokenizer, "unk_token_id", None)
    if kind == "llama" and unk is not None:
        types[unk] = gguf.TokenType.UNKNOWN
    writer.add_tokenizer_model(kind)
    merges = model.get("merges", [])
    if kind == "gpt2":
        writer.add_tokenizer_pre(pre_tokenizer_name(spec.get("pre_tokenizer")))
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    else:
        scores = merge_scores(merges)
        writer.add_token_list(tokens)  # llama.cpp's SentencePiece tokenizer reads no pre-tokenizer name
        writer.add_token_scores([scores.get(t, 0.0) for t in tokens])
        writer.add_token_types(types)
        # a normalizer that prepends ▁ (Llama 2) makes "a" encode like " a"; Gemma's only replaces spaces
        writer.add_add_space_prefix("Prepend" in json.dumps(spec.get("normalizer")))
    ids = {name: getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "unk", "pad")}
    for name, index in ids.items():
        if index is not None:
            getattr(writer, f"add_{name}_token_id")(index)
    # Whether encoding adds BOS/EOS decides how llama.cpp tokenizes a prompt; ask the tokenizer itself.
    plain, full = tokenizer("a", add_special_tokens=False)["input_ids"], tokenizer("a")["input_ids"]
    extra = len(full) > len(plain)
    writer.add_add_bos_token(bool(extra and ids["bos"] is not None and full[0] == ids["bos"]))
    writer.add_add_eos_token(bool(extra and ids["eos"] is not None and full[-1] == ids["eos"]))
    template = template or tokenizer.chat_template  # the template the run trained with, if it chose one
    if isinstance(template, str):
        writer.add_chat_template(template)


def pre_tokenizer_name(pre: dict[str, Any] | None) -> str:
    """llama.cpp's name for this byte-level pre-tokenizer (it picks its split regex by this name)."""
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex"):
        return "smollm"
    split = steps[0].get("pattern", {}).get("Regex") if kinds == ["Split", "ByteLevel"] else None
    if split == LLAMA3_SPLIT:
        return "llama-bpe"
    if split == QWEN2_SPLIT:
        return "qwen2"
    message = f"unrecognised pre-tokenizer {kinds}; writing 'default', llama.cpp may split text differently"
    warnings.warn(message, stacklevel=3)
    return "default"


__all__ = [
    "LLAMA3_SPLIT",
    "QWEN2_SPLIT",
    "merge_scores",
    "pre_tokenizer_name",
    "tokenizer_kind",
    "write_tokenizer",
]
