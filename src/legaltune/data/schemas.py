"""Record schemas → chat messages.

Every supported record becomes a list of ``{"role", "content"}`` messages (or, for the ``text``
schema, stays pre-formatted text), so formatting and masking have one code path.
"""

from __future__ import annotations

from typing import Any

from legaltune.errors import UserError

ROLES = ("system", "user", "assistant")
SCHEMAS = ("text", "alpaca", "chat", "legal_qa", "alqac", "preference")


class RecordError(UserError, ValueError):
    """A malformed record: which field and what is wrong with it (the caller adds file:line)."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"field '{field}': {message}")


def detect_schema(rec: dict[str, Any], text_field: str = "text") -> str | None:
    """Guess a record's schema from its keys (None when nothing fits)."""
    if "chosen" in rec and "rejected" in rec:
        return "preference"
    if "messages" in rec or "conversations" in rec:
        return "chat"
    if "relevant_articles" in rec:
        return "alqac"
    if "question" in rec and "answer" in rec:
        return "legal_qa"
    if "instruction" in rec and "output" in rec:
        return "alpaca"
    if text_field in rec:
        return "text"
    return None


# How spreadsheet and pandas exports write a missing value into a text cell.
MISSING_WORDS = frozenset({"nan", "NaN", "NAN", "null", "NULL", "None", "<NA>", "N/A", "#N/A"})


def is_missing(value: Any) -> bool:
    """None, a float NaN (Parquet/JSON gaps) or a missing-value word such as "NaN" (CSV exports)."""
    if value is None or (isinstance(value, float) and value != value):
        return True
    return isinstance(value, str) and value.strip() in MISSING_WORDS


def _text(rec: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = rec.get(key)
    if is_missing(value):
        if required:
            shown = f" ({value.strip()!r}, a missing-value marker)" if isinstance(value, str) else ""
            raise RecordError(key, f"missing{shown}")
        return ""
    if not isinstance(value, str):
        raise RecordError(key, f"must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise RecordError(key, "empty")
    return value


def chat_messages(rec: dict[str, Any]) -> list[dict[str, str]]:
    """Validate a chat record: roles known, contents strings, at least one assistant turn after a user turn."""
    key = "messages" if "messages" in rec else "conversations"
    msgs = rec[key]
    if not isinstance(msgs, list) or not msgs:
        raise RecordError(key, "must be a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise RecordError(f"{key}[{i}]", "must be an object with role and content")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        role = {"human": "user", "gpt": "assistant"}.get(role, role)  # ShareGPT spelling
        if role not in ROLES:
            raise RecordError(f"{key}[{i}].role", f"{role!r} is not one of {', '.join(ROLES)}")
        if role == "system" and i != 0:
            raise RecordError(f"{key}[{i}].role", "a system message may only come first")
        if is_missing(content) or not isinstance(content, str) or not content.strip():
            raise RecordError(f"{key}[{i}].content", "must be a non-empty string")
        out.append({"role": role, "content": content})
    roles = [m["role"] for m in out if m["role"] != "system"]
    if "assistant" not in roles:
        raise RecordError(key, "has no assistant turn to learn from")
    if roles[0] != "user":
        raise RecordError(key, "the first non-system turn must be the user's")
    for a, b in zip(roles, roles[1:], strict=False):
        if a == b:
            raise RecordError(key, f"two {a} turns in a row; merge them or add the missing turn")
    return out


def user_prompt(question: str, context: str) -> str:
    """The user turn of a legal QA record: the article text first (when given), then the question."""
    if context.strip():
        return f"Căn cứ pháp lý tham khảo:\n{context.strip()}\n\nCâu hỏi: {question.strip()}"
    return question.strip()


def legal_qa_messages(rec: dict[str, Any], use_context: bool = True) -> list[dict[str, str]]:
    question = _text(rec, "question")
    answer = _text(rec, "answer")
    context = _text(rec, "context", required=False) if use_context else ""
    if context and not isinstance(context, str):
        raise RecordError("context", "must be a string")
    return [
        {"role": "user", "content": user_prompt(question, context)},
        {"role": "assistant", "content": answer},
    ]


def alpaca_messages(rec: dict[str, Any]) -> list[dict[str, str]]:
    instruction = _text(rec, "instruction")
    extra = _text(rec, "input", required=False)
    prompt = f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction.strip()
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(rec, "output")}]


def _answer(rec: dict[str, Any], key: str) -> str:
    """A preference answer: a string, or TRL's conversational form (one assistant message, or a list of one)."""
    value = rec.get(key)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        if value.get("role", "assistant") != "assistant":
            raise RecordError(f"{key}.role", f"{value.get('role')!r}: a preference answer is the assistant's")
        value = value.get("content")
        rec = {key: value}
    elif isinstance(value, list):
        raise RecordError(key, "must be a string or one assistant message, not a list of several")
    return _text(rec, key)


def preference_rejected(rec: dict[str, Any]) -> str:
    """The rejected answer of a preference record (checked: a non-empty string that differs from chosen)."""
    rejected = _answer(rec, "rejected")
    if rejected.strip() == _answer(rec, "chosen").strip():
        raise RecordError("rejected", "same text as chosen: the pair would teach nothing")
    return rejected


def preference_chosen(rec: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A preference record ``{prompt, chosen, rejected}`` as the record its prompt and chosen answer
    make, with that record's schema: ``legal_qa`` when the prompt is a question (its ``context`` and
    ``citation`` kept), ``chat`` when it is a list of messages ending with the user's turn."""
    chosen = _answer(rec, "chosen")
    preference_rejected(rec)
    prompt = rec.get("prompt")
    if isinstance(prompt, list):
        try:
            chat = chat_messages({"messages": [*prompt, {"role": "assistant", "content": chosen}]})
        except RecordError as exc:  # name the user's field, not the conversation built from it
            raise RecordError(
                exc.field.replace("messages", "prompt", 1), str(exc).split(": ", 1)[1]
            ) from None
        if len(chat) < 2 or chat[-2]["role"] != "user":
            raise RecordError("prompt", "a list of messages must end with the user's turn")
        return {**_kept(rec), "messages": chat}, "chat"
    question = _text(rec, "prompt")
    return {**_kept(rec), "question": question, "answer": chosen}, "legal_qa"


def _kept(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: rec[k] for k in ("id", "context", "citation") if k in rec}


def to_messages(rec: dict[str, Any], schema: str, *, use_context: bool = True) -> list[dict[str, str]]:
    """Messages for a record of a known schema (alqac records are joined first, see alqac.py)."""
    if schema == "chat":
        return chat_messages(rec)
    if schema in ("legal_qa", "alqac"):
        return legal_qa_messages(rec, use_context)
    if schema == "alpaca":
        return alpaca_messages(rec)
    if schema == "preference":
        return to_messages(*preference_chosen(rec), use_context=use_context)
    raise RecordError("format", f"cannot turn schema {schema!r} into messages")
