"""A conversation's last turn apart: the prompt an answer replies to, its question and its reference."""

from __future__ import annotations


def split_turn(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str, str]:
    """(prompt, question, reference): the final assistant turn is the reference, all before it the prompt."""
    k = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = messages[:k]
    question = next(m["content"] for m in reversed(prompt) if m["role"] == "user")
    return prompt, question, messages[k]["content"]


def prompt_text(prompt: list[dict[str, str]]) -> str:
    """The conversation an answer replies to, as citation checks read it (system prompt left out)."""
    return "\n".join(m["content"] for m in prompt if m["role"] != "system")
