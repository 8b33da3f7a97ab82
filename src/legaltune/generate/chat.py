"""`legaltune chat`: multi-turn chat with a tuned run or a base model, tokens streamed as generated.

At a terminal it is interactive (``/reset``, ``/system TEXT``, ``/exit``, ``/help``). From a pipe it
reads one question per line and writes each answer on stdout, keeping the conversation between
lines; notices (history cleared, turns dropped) go to stderr so stdout carries answers only.
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import torch
from transformers import TextStreamer

from legaltune.data.schemas import user_prompt
from legaltune.generate.answers import stop_token_ids
from legaltune.generate.load import load_generator

HELP = (
    "commands: /reset (forget the conversation), /system TEXT (set the system prompt; '/system -' removes "
    "it, '/system' shows it), /exit (or Ctrl-D), /help"
)


class _Streamer(TextStreamer):
    """TextStreamer that writes to a given stream (TextStreamer itself always prints to stdout)."""

    def __init__(self, tokenizer: Any, out: TextIO):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out = out
        self.started = False

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if not self.started:
            text = text.lstrip()  # the template's newline after the assistant header
            self.started = bool(text)
        self.out.write(text)
        self.out.flush()


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _prompt_ids(
    tokenizer: Any, messages: list[dict[str, str]], template: str | None, device: Any
) -> torch.Tensor:
    kwargs = {"chat_template": template} if template else {}
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)


@torch.no_grad()
def _answer(
    model: Any,
    tokenizer: Any,
    ids: torch.Tensor,
    stops: list[int],
    out: TextIO,
    stream: bool,
    gen: dict[str, Any],
) -> dict[str, Any]:
    streamer = _Streamer(tokenizer, out) if stream else None
    seqs = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id,
        streamer=streamer,
        **gen,
    )
    new = seqs[0, ids.shape[1] :].tolist()
    stop_at = next((k for k, t in enumerate(new) if t in stops), None)
    kept = new if stop_at is None else new[:stop_at]
    text = tokenizer.decode(kept, skip_special_tokens=True).strip()
    if not stream:
        out.write(text)
    out.write("\n")
    out.flush()
    return {"answer": text, "new_tokens": len(kept), "stopped": stop_at is not None}


def chat_loop(
    model: Any,
    tokenizer: Any,
    *,
    system_prompt: str | None,
    template: str | None,
    end_of_turn: str | None,
    stream: bool = True,
    input_stream: TextIO | None = None,
    output: TextIO | None = None,
    status: TextIO | None = None,
    max_new_tokens: int = 512,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    context: Callable[[str], str | None] | None = None,
    verifier: Any = None,
) -> list[dict[str, Any]]:
    """Chat until /exit or end of input; returns the turns (question, answer, new_tokens, stopped).

    ``context(question)`` gives law text to put before each question (as the run was trained; the
    history keeps the bare question). With a ``verifier``, each answer's citations are checked and
    marked on the status stream, one line each: ✓ / ✗ / ?, the unit and law, the article's title.
    """
    input_stream = input_stream or sys.stdin
    output = output or sys.stdout
    status = status or sys.stderr
    interactive = _is_tty(input_stream)
    model.eval()
    device = next(model.parameters()).device
    stops = stop_token_ids(tokenizer, end_of_turn)
    gen: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
    if do_sample:
        gen.update(temperature=temperature, top_p=top_p)
    # Room for the answer inside the model's context; older turns go first. (Not max_seq_length: that
    # bounds training examples, and the tokenizer's model_max_length is set to it by load_model.)
    limit = getattr(model.config, "max_position_embeddings", None) or 10**9
    history: list[dict[str, str]] = []
    turns: list[dict[str, Any]] = []
    system = system_prompt
    if interactive:
        status.write(f"legaltune chat — {HELP}\n")
    while True:
        if interactive:
            output.write("\n» ")
            output.flush()
        line = input_stream.readline()
        if not line:  # end of input (Ctrl-D or the pipe is done)
            break
        line = unicodedata.normalize("NFC", line.strip())  # macOS and some IMEs type NFD
        if not line:
            continue
        command, _, arg = line.partition(" ")
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            history = []
            status.write("(conversation cleared)\n")
            continue
        if command == "/system":
            if arg.strip() == "-":
                system = None
            elif arg.strip():
                system = arg.strip()
            status.write(f"(system prompt: {system!r})\n")
            continue
        if command == "/help":
            status.write(HELP + "\n")
            continue
        if command.startswith("/") and command[1:].isalpha():
            status.write(f"unknown command {command}; {HELP}\n")
            continue
        user = {"role": "user", "content": line}
        law_text = context(line) if context is not None else None
        asked = {"role": "user", "content": user_prompt(line, law_text)} if law_text else user
        while True:
            messages = ([{"role": "system", "content": system}] if system else []) + history + [asked]
            ids = _prompt_ids(tokenizer, messages, template, device)
            if ids.shape[1] + max_new_tokens <= limit or not history:
                break
            history = history[2:]  # drop the oldest question and its answer
            status.write("(the conversation is longer than the context: dropped the oldest turn)\n")
        try:
            turn = _answer(model, tokenizer, ids, stops, output, stream, gen)
        except KeyboardInterrupt:
            if not interactive:
                raise
            output.write("\n(interrupted; this question is not kept)\n")
            continue
        history += [user, {"role": "assistant", "content": turn["answer"]}]
        if verifier is not None:
            checks = verifier.check(turn["answer"], "\n".join(m["content"] for m in messages[-3:]))
            for c in checks:
                status.write(f"  {c.describe()}\n")
            turn["citations"] = [c.to_dict() for c in checks]
        turns.append({"question": line, **turn})
    return turns


def run_chat(
    run_dir: str | Path | None = None,
    model_name: str | None = None,
    *,
    verify: bool = True,
    context_fill: str | None = None,
    **kwargs: Any,
) -> int:
    """Load ``--run RUN_DIR`` (its training prompt format) or ``--model NAME`` and chat on stdin/stdout.

    A run trained with ``data.context_fill`` gets the best BM25 articles before each question (or
    ``context_fill`` says otherwise); ``verify`` marks each answer's citations against the corpus."""
    gen = load_generator(run_dir, model_name, context_fill=context_fill)
    law_context = None
    if gen.context_fill != "none" and gen.use_context:

        def law_context(question: str) -> str | None:
            return gen.corpus_context({"question": question})

    try:
        chat_loop(
            gen.model,
            gen.tokenizer,
            system_prompt=gen.system_prompt,
            template=gen.template,
            end_of_turn=gen.end_of_turn,
            context=law_context,
            verifier=gen.verifier() if verify else None,
            **kwargs,
        )
    except KeyboardInterrupt:
        print(file=sys.stderr)
    return 0
