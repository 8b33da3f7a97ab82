"""Input rows of `legaltune generate` (and serve's requests) as the conversations a model answers.

A row is ``messages`` or a ``question`` with an optional ``context``; it is cleaned (NFC, tone
style) and formatted as in training, the system prompt prepended.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from legaltune.data.schemas import user_prompt
from legaltune.generate.load import Generator
from legaltune.records.read import DataError
from legaltune.text import vietnamese as vn

Key = tuple[str, Any]


def _clean(text: str, gen: Generator) -> str:
    # The same hygiene as training (NFC, tone style), so that NFD input tokenizes as the model saw it.
    return vn.clean(text, nfc=gen.nfc, tone_style=gen.tone_style)  # type: ignore[arg-type]


def row_messages(row: dict[str, Any], gen: Generator, where: str = "") -> list[dict[str, str]]:
    """Conversation to answer for an input row: ``messages`` (a trailing assistant turn is dropped),
    or ``question`` with an optional ``context``, formatted as in training; system prompt prepended."""
    check_row(row, where)
    if "messages" in row:
        msgs = [
            {"role": m.get("role", ""), "content": _clean(str(m.get("content", "")), gen)}
            for m in row["messages"]
        ]
        while msgs and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]  # a reference answer: the model answers the user turn before it
    else:
        context = row.get("context") if gen.use_context else None
        if gen.use_context and not (isinstance(context, str) and context.strip()):
            context = gen.corpus_context(row)
        text = user_prompt(row["question"], context if isinstance(context, str) else "")
        msgs = [{"role": "user", "content": _clean(text, gen)}]
    if gen.system_prompt and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": gen.system_prompt}, *msgs]
    return msgs


def read_input(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, row) for each non-blank line of a JSONL file (UTF-8/16 with or without BOM)."""
    from legaltune.records.read import read_jsonl

    return read_jsonl(path)


def check_row(row: dict[str, Any], where: str = "") -> None:
    """What :func:`row_messages` needs of a row, checked without a model (before one is loaded)."""
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
            raise DataError(f"{where}field 'messages' must be a list of {{role, content}}")
        roles = [m.get("role") for m in msgs]
        while roles and roles[-1] == "assistant":
            roles.pop()
        if not roles or roles[-1] != "user":
            raise DataError(f"{where}'messages' must end with a user turn")
    elif not (isinstance(row.get("question"), str) and row["question"].strip()):
        raise DataError(f"{where}a row needs a non-empty 'question' (+ optional 'context') or 'messages'")


def row_key(line: int, row: dict[str, Any]) -> Key:
    """How resuming matches an output row to its input row: ``id``, else the input line number."""
    return ("id", row["id"]) if row.get("id") is not None else ("line", line)
