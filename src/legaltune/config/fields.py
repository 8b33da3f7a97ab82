"""Field declarations and the generic validator behind the config schema.

Each config field is a dataclass field whose metadata carries its documentation (meaning, the
seed's advice) and its constraints. The validator walks a plain dict (from YAML and ``--set``),
collects *every* problem with its key path and a fix, and only then builds the dataclasses, so a
user sees all mistakes in one go instead of fixing them one run at a time.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import functools
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from legaltune.errors import UserError

_MISSING = dataclasses.MISSING


def opt(
    default: Any = _MISSING,
    doc: str = "",
    *,
    seed: str = "",
    choices: tuple[Any, ...] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    aliases: tuple[str, ...] = (),
    normalize: dict[str, str] | None = None,
    default_factory: Any = _MISSING,
) -> Any:
    """Declare a documented, constrained config field.

    ``doc`` says what the field means; ``seed`` what the seed documents advise. ``normalize`` maps
    accepted spellings to the canonical one (``bf16`` → ``bfloat16``) before choices are checked.
    """
    meta = {
        "doc": doc,
        "seed": seed,
        "choices": choices,
        "ge": ge,
        "gt": gt,
        "le": le,
        "lt": lt,
        "aliases": aliases,
        "normalize": normalize or {},
    }
    if default_factory is not _MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where, what, and how to fix it."""

    path: str
    message: str
    fix: str = ""
    line: str = ""  # "file.yaml:12" when the key came from a file

    def __str__(self) -> str:
        where = f"{self.line}: " if self.line else ""
        fix = f"\n    fix: {self.fix}" if self.fix else ""
        return f"{where}{self.path}: {self.message}{fix}"


class ConfigError(UserError, ValueError):
    """Raised with every problem found in a config, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        n = len(problems)
        head = f"{n} problem{'s' if n != 1 else ''} in the config:"
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in problems))


def type_name(tp: Any) -> str:
    """Human-readable type for messages and docs."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) if isinstance(a, str) else str(a).lower() for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp)
        return f"list[{type_name(inner)}]"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


class _Invalid(Exception):
    pass


def _coerce(value: Any, tp: Any) -> Any:
    """Check ``value`` against annotation ``tp``; return it (lightly coerced) or raise _Invalid."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        # bool before str so that `true` stays a bool in `bool | Literal["unsloth"]`.
        for arg in sorted(args, key=lambda a: a is not bool):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except _Invalid:
                continue
        raise _Invalid
    if origin is Literal:
        # type() equality keeps `True` from matching a literal 1 and vice versa.
        if any(a == value and type(a) is type(value) for a in typing.get_args(tp)):
            return value
        raise _Invalid
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str) and inner is str:
            # `--set lora.target_modules=q_proj,v_proj` is the natural CLI spelling.
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise _Invalid
        return [_coerce(v, inner) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Invalid
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Invalid
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Invalid
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # PyYAML reads `2e-4` (no dot) as a string; accept it as the number users meant.
            try:
                return float(value)
            except ValueError:
                raise _Invalid from None
        raise _Invalid
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):  # a file name passed from code as a Path
            return os.fspath(value)
        raise _Invalid
    raise _Invalid


def _takes_word(tp: Any, word: str, value: Any) -> bool:
    """Whether a field of type ``tp`` should get the plain YAML word the user wrote instead of the
    YAML 1.1 value PyYAML made of it (``no`` → False, ``off`` → False, ``1:30`` → 90)."""
    origin = typing.get_origin(tp)
    if tp is str:
        return True
    if origin is Literal:
        choices = typing.get_args(tp)
        if word in choices:
            return True
        # a word-only choice keeps the word, so its error names 'no' as written, not False
        return value not in choices and all(isinstance(c, str) for c in choices)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if any(word in typing.get_args(a) for a in args if typing.get_origin(a) is Literal):
            return True  # a choice spelled as written: speed.mode off
        if isinstance(value, bool) and bool in args:
            return False  # a bool where a bool is allowed: use_gradient_checkpointing true
        if isinstance(value, int | float) and not isinstance(value, bool) and (int in args or float in args):
            return False
        return str in args
    return False


def read_as_written(value: Any, word: Any, tp: Any) -> Any:
    """``value`` as the field of type ``tp`` means it, given ``word``: the plain scalar's source text
    (a list of them for a flow or block sequence; None where an item was quoted or nested).

    String and choice fields keep the word (``eval_strategy: no`` is ``"no"``, as YAML 1.2 reads
    it); bool and number fields keep PyYAML's value (``load_in_4bit: yes`` stays True); nulls stay
    null. Quoted scalars are strings already and come through unchanged.
    """
    if value is None or isinstance(value, str) or word is None:
        return value
    if isinstance(value, list) and isinstance(word, list) and len(word) == len(value):
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next((a for a in typing.get_args(tp) if typing.get_origin(a) is list), None)
        if typing.get_origin(tp) is not list:
            return value
        (inner,) = typing.get_args(tp)
        return [read_as_written(v, w, inner) for v, w in zip(value, word, strict=True)]
    if isinstance(word, str) and not isinstance(value, list | dict) and _takes_word(tp, word, value):
        return word
    return value


def _check_range(value: Any, meta: dict[str, Any]) -> str | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    for key, op, word in (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    ):
        bound = meta.get(key)
        if bound is not None and not op(value, bound):
            return f"must be {word} {bound:g} (got {value:g})"
    return None


def suggest(name: str, candidates: list[str]) -> str:
    """A 'did you mean' for an unknown key, or ''."""
    best = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"did you mean '{best[0]}'?" if best else ""


def validate_section(
    cls: type,
    data: Any,
    prefix: str,
    problems: list[Problem],
    lines: dict[str, str],
    all_keys: dict[str, str],
    words: dict[str, Any] | None = None,
) -> Any:
    """Build dataclass ``cls`` from mapping ``data``, appending problems instead of raising.

    ``all_keys`` maps every field name of every section to its full path so that a key put in
    the wrong section gets "did you mean 'training.learning_rate'?". ``words`` maps a key path to
    the plain YAML text its value was written as (see :func:`read_as_written`).
    """
    words = words or {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(
            Problem(
                prefix, f"must be a mapping of keys, got {type(data).__name__}", "", lines.get(prefix, "")
            )
        )
        return cls()
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    alias_to_name = {a: f.name for f in fields.values() for a in f.metadata.get("aliases", ())}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}"
        name = alias_to_name.get(key, key)
        if name not in fields:
            local = suggest(key, list(fields) + list(alias_to_name))
            hint = local or (
                f"did you mean '{all_keys[key]}'? ('{key}' belongs to another section)"
                if key in all_keys
                else ""
            )
            if not hint:
                hint = suggest(key, list(all_keys))
                if hint:
                    hint = f"did you mean '{all_keys[hint.split(chr(39))[1]]}'?"
            problems.append(
                Problem(
                    path,
                    "unknown key",
                    hint or f"valid keys in '{prefix}': {', '.join(sorted(fields))}",
                    lines.get(path, ""),
                )
            )
            continue
        if name in kwargs:
            problems.append(
                Problem(
                    path,
                    f"'{key}' is another name for '{prefix}.{name}', which is also set",
                    f"keep only one of '{prefix}.{name}' and its alias",
                    lines.get(path, ""),
                )
            )
            continue
        value = read_as_written(value, words.get(path), hints[name])
        value, problem = check_value(fields[name], hints[name], value, path, lines.get(path, ""))
        if problem is not None:
            problems.append(problem)
            continue
        kwargs[name] = value
    found: list[Problem] = []
    token = _COLLECT.set(found)
    try:
        section = cls(**kwargs)
    finally:
        _COLLECT.reset(token)
    problems.extend(dataclasses.replace(p, line=lines.get(p.path, "")) for p in found)
    return section


def check_value(
    f: dataclasses.Field[Any], tp: Any, value: Any, path: str, line: str = ""
) -> tuple[Any, Problem | None]:
    """(``value`` as field ``f`` of type ``tp`` stores it, None), or (value, the problem with it):
    accepted spellings normalised, the type checked (lightly coerced), choices and range checked.

    Every way of building a section runs this: the YAML path field by field (collecting every problem
    with its file line) and a section constructed in code, from :meth:`Section.__post_init__`."""
    meta = f.metadata
    if isinstance(value, str) and meta.get("normalize"):
        value = meta["normalize"].get(value.lower(), value)
    try:
        value = _coerce(value, tp)
    except _Invalid:
        return value, Problem(
            path,
            f"expected {type_name(tp)}, got {value!r} ({type(value).__name__})",
            _choice_fix(meta, tp),
            line,
        )
    if meta.get("choices") and value is not None:
        bad = [v for v in (value if isinstance(value, list) else [value]) if v not in meta["choices"]]
        if bad:
            guess = suggest(str(bad[0]), [str(c) for c in meta["choices"]])
            return value, Problem(
                path,
                f"{bad[0]!r} is not a valid value",
                (guess + " " if guess else "") + _choice_fix(meta, tp),
                line,
            )
    msg = _check_range(value, meta)
    if msg:
        advice = f" (seed: {meta['seed']})" if meta.get("seed") else ""
        return value, Problem(path, msg, f"set {path} within that range{advice}", line)
    return value, None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class Section:
    """Base of the config sections: a section checks its fields against their declarations when it
    is built, however it is built (YAML, ``dataclasses.replace``, code such as the seed's API), and
    raises :class:`ConfigError` naming every bad key as ``section.key``.

    ``key`` is the section's name in a config file: ``class LoraConfig(Section, key="lora")``.
    """

    key: ClassVar[str] = ""

    def __init_subclass__(cls, key: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.key = key or cls.key

    def __post_init__(self) -> None:
        problems = []
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value, problem = check_value(f, hints[f.name], getattr(self, f.name), f"{self.key}.{f.name}")
            if problem is not None:
                problems.append(problem)
            else:
                object.__setattr__(self, f.name, value)
        if not problems:  # the section's own rules read checked values
            problems = self.rules()
        collect = _COLLECT.get()
        if collect is not None:
            collect.extend(problems)
        elif problems:
            raise ConfigError(problems)

    def rules(self) -> list[Problem]:
        """Rules between this section's own fields (rules across sections are config.load's)."""
        return []


# Set while validate_section builds a section: its problems join the config's list (with their
# file lines) instead of raising, so that a user sees every mistake of a file at once.
_COLLECT: contextvars.ContextVar[list[Problem] | None] = contextvars.ContextVar(
    "config_problems", default=None
)


def _choice_fix(meta: dict[str, Any], tp: Any) -> str:
    if meta.get("choices"):
        return "use one of: " + ", ".join(repr(c) for c in meta["choices"])
    return f"use a value of type {type_name(tp)}"


def field_docs(cls: type) -> list[tuple[str, str, Any, str, str]]:
    """(name, type, default, doc, seed advice) for every field of a section, in declaration order."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not _MISSING else f.default_factory()  # type: ignore[misc]
        names = f.name + "".join(f" / {a}" for a in f.metadata.get("aliases", ()))
        rows.append((names, type_name(hints[f.name]), default, f.metadata["doc"], f.metadata["seed"]))
    return rows
