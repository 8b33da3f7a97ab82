"""A chat request's messages → the prompt token ids, formatted exactly as the run was trained."""

from __future__ import annotations

from typing import Any

from legaltune.data.schemas import user_prompt
from legaltune.errors import UserError
from legaltune.generate.load import Generator
from legaltune.generate.rows import row_messages
from legaltune.serve.protocol import Message


class PromptError(UserError, ValueError):
    """The messages cannot be turned into a prompt (HTTP 400); the text says why."""


def prompt_ids(gen: Generator, messages: list[Message]) -> tuple[list[int], str]:
    """Token ids of the conversation with the generation prompt appended (the run's template, its
    system prompt when the request has none, the same Vietnamese text hygiene as training), and the
    text of the question asked. A run trained with law context (``data.context_fill``) gets the
    corpus articles before the question, as in `legaltune chat`."""
    if messages[-1].role != "user":
        raise PromptError(
            f"messages: the last message must be from the user (it is {messages[-1].role!r}); "
            "continuing an assistant message is not supported"
        )
    turns = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]
    question = turns[-1]["content"]
    if gen.context_fill != "none" and gen.use_context:
        law_text = gen.corpus_context({"question": question})
        if law_text:
            turns[-1] = {"role": "user", "content": user_prompt(question, law_text)}
    convo = row_messages({"messages": turns}, gen)
    kwargs: dict[str, Any] = {"chat_template": gen.template} if gen.template else {}
    try:
        text = gen.tokenizer.apply_chat_template(convo, tokenize=False, add_generation_prompt=True, **kwargs)
    except Exception as exc:  # the template's own checks (role order, ...) raise from inside Jinja
        raise PromptError(f"messages: the model's chat template refused them: {exc}") from None
    return gen.tokenizer(text, add_special_tokens=False)["input_ids"], convo[-1]["content"]
