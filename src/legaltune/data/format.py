"""Chat-template formatting and loss masking.

A conversation is rendered once with the chat template; the character spans to train on are
found by rendering growing prefixes of it (the text up to an assistant turn's start, and up to its
end), then mapped to tokens with the tokenizer's offsets. This works for any template whose
renders of a conversation's prefixes are prefixes of the full render (checked, with an error
naming the template when not), and needs no ``{% generation %}`` markers in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from legaltune.errors import UserError

IGNORE = -100
BUILTIN_TEMPLATES = ("chatml", "llama-3.1", "gemma", "gemma-pretrained")
# Built-in templates for tokenizers that ship without one (pretrained, not instruction-tuned,
# checkpoints), recognised by the turn markers in their vocabulary. A pretrained checkpoint never
# trained those markers, so its template closes the model's turns with eos (gemma-pretrained.jinja
# says why): "gemma", which closes them with <end_of_turn>, is for instruction-tuned Gemmas.
_FALLBACK_MARKERS = {"gemma-pretrained": ("<start_of_turn>", "<end_of_turn>")}
_PROBE = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]


class TemplateError(UserError, ValueError):
    """A chat template that legaltune cannot mask reliably, and why."""


def load_template(name_or_path: str | None) -> str | None:
    """Template text for a built-in name or a .jinja file; None keeps the tokenizer's own."""
    if name_or_path is None:
        return None
    if name_or_path in BUILTIN_TEMPLATES:
        return (
            resources.files("legaltune.data.templates")
            .joinpath(f"{name_or_path}.jinja")
            .read_text(encoding="utf-8")
        )
    path = Path(name_or_path)
    if path.is_file():
        return path.read_text(encoding="utf-8")
    raise TemplateError(
        f"data.chat_template: {name_or_path!r} is neither a built-in template ({', '.join(BUILTIN_TEMPLATES)}) nor a file"
    )


def fallback_template_name(tokenizer: Any) -> str | None:
    """The built-in template a tokenizer without a chat template gets: the one whose turn markers
    are all single tokens of its vocabulary (a pretrained Gemma's ``<start_of_turn>``), else None."""
    if getattr(tokenizer, "chat_template", None):
        return None
    unk = getattr(tokenizer, "unk_token_id", None)
    for name, markers in _FALLBACK_MARKERS.items():
        ids = [tokenizer.convert_tokens_to_ids(m) for m in markers]
        if all(isinstance(i, int) and i != unk for i in ids):
            return name
    return None


def end_of_turn_token(tokenizer: Any, template: str | None = None) -> str | None:
    """The token that closes an assistant turn in ``template`` (None: the tokenizer's own), or None
    when the template closes none (a base model's plain format: it can still answer, stopping at
    eos only). Generation, export and merge all stop at this token."""
    try:
        return ChatFormatter(tokenizer, template=template).end_of_turn.strip() or None
    except TemplateError:
        return None


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    trained: int  # tokens with a label after truncation
    truncated: bool = False
    lost_trained: int = 0  # trained tokens cut off by truncation


class ChatFormatter:
    """Turns messages (or pre-formatted text) into input ids and labels."""

    def __init__(self, tokenizer: Any, *, template: str | None = None, train_on: str = "responses"):
        self.tok = tokenizer
        self.template = template
        self.train_on = train_on
        if template is None and not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                "the tokenizer has no chat template; set data.chat_template: chatml "
                f"(or {', '.join(t for t in BUILTIN_TEMPLATES if t != 'chatml')}, or a .jinja file)"
            )
        # The text that opens an assistant turn and the one that closes it, read off a probe render.
        before = self.render(_PROBE[:1], add_generation_prompt=True)
        full = self.render(_PROBE)
        if not full.startswith(before):
            raise TemplateError("the chat template's generation prompt is not a prefix of the rendered reply")
        reply = full[len(before) :].rstrip()
        self.assistant_header = before[len(self.render(_PROBE[:1])) :]
        self.end_of_turn = reply[reply.index("A") + 1 :] if "A" in reply else ""
        if not self.end_of_turn.strip():
            raise TemplateError(
                "the chat template does not close assistant turns with an end-of-turn token, so a tuned model "
                f"would not learn to stop; use data.chat_template {' or '.join(BUILTIN_TEMPLATES)}, or fix the template"
            )

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        from jinja2 import TemplateError as JinjaError

        kwargs = {"chat_template": self.template} if self.template else {}
        try:
            return self.tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
            )
        except JinjaError as exc:  # syntax, sandbox (SecurityError), undefined names, raise_exception()
            where = "data.chat_template" if self.template else "the tokenizer's chat template"
            line = f" (template line {exc.lineno})" if getattr(exc, "lineno", None) else ""
            raise TemplateError(
                f"{where} failed to render{line}: {type(exc).__name__}: {exc}. Templates run in Jinja's "
                "sandbox (no attribute access to Python internals such as __class__); fix the template "
                "or use data.chat_template chatml or llama-3.1"
            ) from None

    def spans(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """Rendered text and the character spans that carry loss (each assistant turn with its end-of-turn)."""
        text = self.render(messages)
        if self.train_on == "all":
            return text, [(0, len(text))]
        spans = []
        for k, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start_text = self.render(messages[:k], add_generation_prompt=True)
            end_text = self.render(messages[: k + 1])
            if not (text.startswith(start_text) and text.startswith(end_text)):
                raise TemplateError(
                    "the chat template renders a conversation's prefix differently from the whole conversation "
                    "(e.g. it drops earlier reasoning), so assistant turns cannot be located; set data.train_on: all "
                    "or use another template"
                )
            end = len(end_text.rstrip())  # train the end-of-turn token, not the newline after it
            spans.append((len(start_text), end))
        return text, spans

    def text_spans(self, text: str) -> list[tuple[int, int]]:
        """Assistant spans in pre-formatted text, found by the template's assistant header and end-of-turn."""
        if self.train_on == "all":
            return [(0, len(text))]
        spans, pos = [], 0
        while (h := text.find(self.assistant_header, pos)) != -1:
            start = h + len(self.assistant_header)
            e = text.find(self.end_of_turn, start)
            end = len(text) if e == -1 else e + len(self.end_of_turn)
            spans.append((start, end))
            pos = end
        return spans

    def encode_spans(
        self, text: str, spans: list[tuple[int, int]], max_len: int, overlength: str
    ) -> Encoded | None:
        """Tokenize and label; None when the example is dropped for length (overlength: drop)."""
        # verbose=False: over-long texts are expected here; they are truncated or dropped below, and counted
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        ids: list[int] = enc["input_ids"]
        labels = [IGNORE] * len(ids)
        j = 0
        for i, (s, _e) in enumerate(enc["offset_mapping"]):
            while j < len(spans) and s >= spans[j][1]:
                j += 1
            if j < len(spans) and spans[j][0] <= s < spans[j][1]:
                labels[i] = ids[i]
        # The first token is never predicted (nothing precedes it); masking it keeps packed rows from
        # training one example's last position on the next example's first token.
        if labels:
            labels[0] = IGNORE
        trained = sum(1 for x in labels if x != IGNORE)
        if len(ids) <= max_len:
            return Encoded(ids, labels, trained)
        if overlength == "drop":
            return None
        kept = sum(1 for x in labels[:max_len] if x != IGNORE)
        return Encoded(ids[:max_len], labels[:max_len], kept, truncated=True, lost_trained=trained - kept)

    def encode(
        self, messages: list[dict[str, str]], max_len: int, overlength: str = "truncate"
    ) -> Encoded | None:
        text, spans = self.spans(messages)
        return self.encode_spans(text, spans, max_len, overlength)

    def encode_text(self, text: str, max_len: int, overlength: str = "truncate") -> Encoded | None:
        return self.encode_spans(text, self.text_spans(text), max_len, overlength)
