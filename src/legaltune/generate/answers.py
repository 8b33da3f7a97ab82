"""Batched answer generation with a tuned run or a base model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Answer:
    text: str
    new_tokens: int
    stopped: bool  # the end-of-turn token was emitted before max_new_tokens


def stop_token_ids(tokenizer: Any, end_of_turn: str | None = None) -> list[int]:
    """Token ids that end an answer: the tokenizer's eos and the template's end-of-turn token."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if end_of_turn:
        tid = tokenizer.convert_tokens_to_ids(end_of_turn)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(ids)


class _CountFinished:
    """A stopping criterion that never stops anything: it reports each row of a batch the step it
    emits a stop token, so a progress bar moves per answer rather than per batch."""

    def __init__(self, stops: list[int], callback: Callable[[int], None]):
        self.stops = torch.tensor(stops, dtype=torch.long)
        self.callback = callback
        self.done: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        finished = torch.isin(input_ids[:, -1], self.stops.to(input_ids.device))
        if self.done is None:
            self.done = torch.zeros_like(finished)
        new = int((finished & ~self.done).sum())
        if new:
            self.done |= finished
            self.callback(new)
        return torch.zeros_like(finished)

    def finish(self, rows: int) -> None:
        """The rows that ran to max_new_tokens (never emitted a stop token) are done too."""
        left = rows - (int(self.done.sum()) if self.done is not None else 0)
        if left:
            self.callback(left)


@torch.no_grad()
def generate_answers(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    chat_template: str | None = None,
    end_of_turn: str | None = None,
    on_answer: Callable[[int], None] | None = None,
) -> list[Answer]:
    """Answer each conversation (its last turn is the user's); greedy unless do_sample.

    ``on_answer(n)`` is called as answers finish (n of them at that step), for progress bars."""
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    stops = stop_token_ids(tokenizer, end_of_turn)
    device = next(model.parameters()).device
    kwargs = {"chat_template": chat_template} if chat_template else {}
    out: list[Answer] = []
    try:
        for i in range(0, len(conversations), batch_size):
            chunk = conversations[i : i + batch_size]
            prompts = [
                tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True, **kwargs)
                for c in chunk
            ]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            gen_kwargs: dict[str, Any] = {
                "max_new_tokens": max_new_tokens,
                "do_sample": do_sample,
                "eos_token_id": stops,
                "pad_token_id": tokenizer.pad_token_id,
            }
            if do_sample:
                gen_kwargs.update(temperature=temperature, top_p=top_p)
            counter = _CountFinished(stops, on_answer) if on_answer and stops else None
            if counter is not None:
                from transformers import StoppingCriteriaList

                gen_kwargs["stopping_criteria"] = StoppingCriteriaList([counter])
            seqs = model.generate(**enc, **gen_kwargs)
            if counter is not None:
                counter.finish(len(chunk))
            elif on_answer:
                on_answer(len(chunk))
            new = seqs[:, enc["input_ids"].shape[1] :]
            for row in new.tolist():
                stop_at = next((k for k, t in enumerate(row) if t in stops), None)
                kept = row if stop_at is None else row[:stop_at]
                text = tokenizer.decode(kept, skip_special_tokens=True)
                if stop_at is None:
                    # the token limit can cut a multi-byte character in half; drop the broken tail
                    text = text.rstrip("\ufffd")
                out.append(Answer(text.strip(), len(kept), stop_at is not None))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def answer_longest_first(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict[str, str]]],
    gen: dict[str, Any],
    *,
    desc: str,
    show: bool,
    seed: int,
) -> list[Answer]:
    """:func:`generate_answers` over all ``prompts`` (``gen``: its keyword arguments), batched longest
    first under a progress bar; answers in prompt order. ``seed`` seeds torch before the first batch."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)  # sampled runs repeat; base and tuned draw from the same stream start
    # Longest prompts first so that each batch pads little; answers go back to question order.
    order = sorted(range(len(prompts)), key=lambda i: -sum(len(m["content"]) for m in prompts[i]))
    out: list[Any] = [None] * len(prompts)
    size = gen["batch_size"]
    with tqdm(total=len(prompts), desc=desc, unit="q", disable=not show, dynamic_ncols=True) as bar:
        for i in range(0, len(order), size):
            idx = order[i : i + size]
            answers = generate_answers(
                model, tokenizer, [prompts[j] for j in idx], **gen, on_answer=bar.update
            )
            for j, ans in zip(idx, answers, strict=True):
                out[j] = ans
    return out
