"""An Ollama Modelfile beside an exported GGUF: the chat template as a Go template, stops, system prompt.

Ollama templates are Go templates, not Jinja, so the run's Jinja template is not copied: it is
*measured*. Rendering a few probe conversations gives the literal text around each turn (what comes
before the first user turn, with and without a system prompt; around a user turn; around an
assistant turn), and the Go template is those pieces around ``.System`` and ``.Content``. Templates
that fold the system prompt into the first user turn (Gemma) are recognised too. ``render`` applies
the same pieces in Python, and the tests check it against the Jinja template on multi-turn chats.
A template whose turns are not plain text around the content raises ``TemplateShapeError``; the
Modelfile is then written without TEMPLATE (Ollama falls back to the GGUF's own chat template).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legaltune.errors import InputError, UserError
from legaltune.run.atomic import write_text_atomic

_S, _U, _A, _U2 = "SYSPROBE7", "USERPROBE7", "ASSISTANTPROBE7", "SECONDPROBE7"


class TemplateShapeError(UserError, ValueError):
    """The chat template's turns are not fixed text around the message (so no Go template is derived)."""


@dataclass(frozen=True)
class Pieces:
    head: str  # before the first user turn when there is no system prompt
    system_head: str  # ... when there is one, before it
    system_tail: str  # after the system prompt (folded: between it and the first user message)
    folded: bool  # the system prompt is written inside the first user turn
    user_prefix: str
    user_suffix: str
    assistant_prefix: str  # also the generation prompt
    assistant_suffix: str


def _split(text: str, probe: str, where: str) -> tuple[str, str]:
    if text.count(probe) != 1:
        raise TemplateShapeError(f"the chat template does not show the {where} exactly once as written")
    before, _, after = text.partition(probe)
    return before, after


def chat_pieces(tokenizer: Any, template: str | None = None) -> Pieces:
    """Measure the literal text around each turn of the tokenizer's (or the given) chat template."""
    if not template and not getattr(tokenizer, "chat_template", None):
        raise TemplateShapeError("the tokenizer has no chat template")
    kwargs = {"chat_template": template} if template else {}

    def render(messages: list[tuple[str, str]], gen: bool) -> str:
        msgs = [{"role": r, "content": c} for r, c in messages]
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, **kwargs)

    one = render([("user", _U)], False)
    head_user, user_suffix = _split(one, _U, "user message")
    with_prompt = render([("user", _U)], True)
    if not with_prompt.startswith(one):
        raise TemplateShapeError("the generation prompt is not appended after the conversation")
    assistant_prefix = with_prompt[len(one) :]
    answered = render([("user", _U), ("assistant", _A)], False)
    if not answered.startswith(with_prompt):
        raise TemplateShapeError("an assistant turn does not start with the generation prompt")
    assistant_suffix = _split(answered[len(with_prompt) :], _A, "assistant message")[1]
    twice = render([("user", _U), ("assistant", _A), ("user", _U2)], False)
    if not twice.startswith(answered):
        raise TemplateShapeError("a later turn changes the text of earlier ones")
    user_prefix, rest = _split(twice[len(answered) :], _U2, "second user message")
    if rest != user_suffix or not head_user.endswith(user_prefix):
        raise TemplateShapeError("user turns are not written the same way each time")
    head = head_user[: len(head_user) - len(user_prefix)]
    with_system = render([("system", _S), ("user", _U)], False)
    system_head, after = _split(with_system, _S, "system prompt")
    between, tail = _split(after, _U, "user message after a system prompt")
    if tail != user_suffix:
        raise TemplateShapeError("a system prompt changes how the user turn ends")
    folded = system_head.endswith(user_prefix) and not between.endswith(user_prefix)
    if folded:
        system_head = system_head[: len(system_head) - len(user_prefix)]
        system_tail = between
    elif between.endswith(user_prefix):
        system_tail = between[: len(between) - len(user_prefix)]
    else:
        raise TemplateShapeError("the user turn after a system prompt does not start as other user turns")
    return Pieces(
        head, system_head, system_tail, folded, user_prefix, user_suffix, assistant_prefix, assistant_suffix
    )


def render(
    p: Pieces, system: str | None, messages: list[dict[str, str]], generation_prompt: bool = True
) -> str:
    """The prompt the Go template produces, in Python (what Ollama will send the model)."""
    out = [p.system_head if system else p.head]
    if system and not p.folded:
        out += [system, p.system_tail]
    pending = system if p.folded else None
    for m in messages:
        if m["role"] == "user":
            out.append(p.user_prefix)
            if pending:
                out += [pending, p.system_tail]
                pending = None
            out += [m["content"], p.user_suffix]
        elif m["role"] == "assistant":
            out += [p.assistant_prefix, m["content"], p.assistant_suffix]
    if generation_prompt and messages and messages[-1]["role"] == "user":
        out.append(p.assistant_prefix)
    return "".join(out)


def go_template(p: Pieces) -> str:
    """The same as ``render``, as an Ollama (Go text/template) TEMPLATE; no whitespace trimming, so
    every newline of the pieces is kept."""
    for piece in vars(p).values():
        if isinstance(piece, str) and ("{{" in piece or '"""' in piece):
            raise TemplateShapeError("the template's text contains '{{' or '\"\"\"'")
    if p.folded:
        start = (
            f"{{{{ if .System }}}}{p.system_head}{{{{ else }}}}{p.head}{{{{ end }}}}{{{{ $sys := .System }}}}"
        )
        first = f'{{{{ if $sys }}}}{{{{ $sys }}}}{p.system_tail}{{{{ $sys = "" }}}}{{{{ end }}}}'
    else:
        start = f"{{{{ if .System }}}}{p.system_head}{{{{ .System }}}}{p.system_tail}{{{{ else }}}}{p.head}{{{{ end }}}}"
        first = ""
    return (
        start + "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        f'{{{{ if eq .Role "user" }}}}{p.user_prefix}{first}{{{{ .Content }}}}{p.user_suffix}'
        f"{{{{ if $last }}}}{p.assistant_prefix}{{{{ end }}}}"
        f'{{{{ else if eq .Role "assistant" }}}}{p.assistant_prefix}{{{{ .Content }}}}{p.assistant_suffix}'
        "{{ end }}{{ end }}"
    )


def _quoted(text: str, what: str, fix: str) -> str:
    if '"""' in text:
        raise InputError(f'{what} contains """, which cannot be quoted in an Ollama Modelfile; {fix}')
    return f'"""{text}"""'


def modelfile_text(
    gguf_name: str,
    tokenizer: Any,
    *,
    template: str | None,
    stops: list[str],
    system_prompt: str | None,
    context_length: int | None = None,
) -> tuple[str, str | None]:
    """(Modelfile text, a warning or None). Greedy by default, as legaltune's own answers."""
    stem = gguf_name.removesuffix(".gguf")
    lines = [
        f"# written by legaltune export; use: ollama create NAME -f {stem}.Modelfile",
        f"FROM ./{gguf_name}",
    ]
    warning = None
    try:
        template_text = go_template(chat_pieces(tokenizer, template))
        fix = "use another data.chat_template, or export with --no-modelfile"
        lines.append(f"TEMPLATE {_quoted(template_text, 'the chat template', fix)}")
    except TemplateShapeError as exc:
        warning = f"no TEMPLATE in the Modelfile ({exc}); Ollama will use the GGUF's chat template"
    for stop in dict.fromkeys(s for s in stops if s):
        lines.append(f'PARAMETER stop "{stop}"')
    lines.append("PARAMETER temperature 0")
    if context_length:
        lines.append(f"PARAMETER num_ctx {context_length}")
    if system_prompt:
        fix = "remove it from data.system_prompt, or export with --no-modelfile"
        lines.append(f"SYSTEM {_quoted(system_prompt, 'the system prompt', fix)}")
    return "\n".join(lines) + "\n", warning


def write_modelfile(gguf_path: Path, tokenizer: Any, **kwargs: Any) -> tuple[Path, str | None]:
    """Write the Modelfile beside the GGUF (model.gguf → model.Modelfile); returns (path, warning)."""
    text, warning = modelfile_text(gguf_path.name, tokenizer, **kwargs)
    path = gguf_path.with_name(gguf_path.name.removesuffix(".gguf") + ".Modelfile")
    write_text_atomic(path, text, "Ollama Modelfile")
    return path, warning
