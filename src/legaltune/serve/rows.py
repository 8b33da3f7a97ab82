"""Per-row bookkeeping of one batched ``generate`` call: decoding, stops, and early finish.

transformers' ``generate`` calls its stopping criteria once per decoding step with every row's ids
so far, which is exactly where a server needs to act per row: hand the row's new text to its client,
finish a row at an end-of-turn token, a stop string, its own token limit, or its client leaving —
while the other rows of the batch go on. ``RowStopper`` is that criterion; ``Row`` holds one row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria

# finish reasons, as the OpenAI API names them; "cancelled" is ours (the client left) and never sent
STOP, LENGTH, CANCELLED = "stop", "length", "cancelled"


@dataclass
class Row:
    """One request's answer as it is generated: ``emit(text)`` gets each new piece, ``on_end(row)`` is
    called once when the row finishes (at once, not when the batch does, so its slot frees early)."""

    max_tokens: int
    stop_strings: tuple[str, ...]
    emit: Callable[[str], None]
    is_cancelled: Callable[[], bool]
    on_end: Callable[[Row], None]
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # the answer so far (leading whitespace of the template's header removed)
    sent: int = 0  # characters of `text` already emitted
    finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def _release(self, upto: int) -> None:
        if upto > self.sent:
            self.emit(self.text[self.sent : upto])
            self.sent = upto

    def add(self, token: int, stops: set[int], tokenizer: Any) -> None:
        """Take the row's next token and emit what is now certain to be part of the answer."""
        if self.is_cancelled():
            self.finish(CANCELLED)
            return
        if token in stops:
            self.finish(STOP)
            return
        self.tokens.append(token)
        decoded = tokenizer.decode(self.tokens, skip_special_tokens=True).lstrip()
        at_limit = len(self.tokens) >= self.max_tokens
        # A multi-byte character split across tokens decodes as U+FFFD until its last byte arrives.
        self.text = decoded.rstrip("\ufffd") if at_limit else decoded
        for stop in self.stop_strings:
            cut = self.text.find(stop, max(0, self.sent - len(stop) + 1))
            if cut != -1:
                self.text = self.text[:cut]
                self.finish(STOP)
                return
        if at_limit:
            self.finish(LENGTH)
            return
        # Held back: an incomplete character, trailing whitespace (the final answer is stripped), and
        # a tail that may be the start of a stop string, so that no stop text is ever sent.
        safe = len(self.text.rstrip("\ufffd").rstrip())
        hold = max((len(s) - 1 for s in self.stop_strings), default=0)
        self._release(max(self.sent, safe - hold))

    def finish(self, reason: str) -> None:
        """End the row: emit the rest of its text (unless its client left) and report it."""
        if self.done:
            return
        # Trailing whitespace is dropped (as `legaltune generate` strips answers) unless already sent.
        self.text = self.text[: max(self.sent, len(self.text.rstrip()))]
        if reason != CANCELLED:
            self._release(len(self.text))
        self.finish_reason = reason
        self.on_end(self)


class RowStopper(StoppingCriteria):
    """The stopping criterion of a batch: feeds each row its newest token; a row is done when it says so."""

    def __init__(self, rows: list[Row], stops: set[int], tokenizer: Any):
        self.rows, self.stops, self.tokenizer = rows, stops, tokenizer

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        newest = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, newest, strict=True):
            if not row.done:
                row.add(token, self.stops, self.tokenizer)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)
