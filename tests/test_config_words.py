"""Every string and choice field keeps the word the user wrote, in YAML files and in --set.

PyYAML reads YAML 1.1, where plain ``no``/``off``/``yes``/``on`` are booleans and ``1:30`` is 90;
legaltune's typed read gives a field that takes words the word back, and a bool field its bool.
The fields are taken from the schema itself, so a field added later is covered too.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

import pytest

from legaltune.config.fields import ConfigError
from legaltune.config.load import load_config
from legaltune.config.schema import SECTIONS

BOOL_WORDS = {"no": False, "off": False, "yes": True, "on": True, "NO": False, "Off": False, "ON": True}
# other plain scalars YAML 1.1 does not read as text: sexagesimal, octal, exponent, underscore number
NUMBER_WORDS = ["1:30", "0o17", "1e3", "1_000", "2024"]


def _args(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)


def _literals(tp: Any) -> set[Any]:
    return {v for a in _args(tp) if typing.get_origin(a) is Literal for v in typing.get_args(a)}


def _fields(pred) -> list[tuple[str, Any, dataclasses.Field]]:
    out = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if pred(hints[f.name]):
                out.append((f"{section}.{f.name}", hints[f.name], f))
    return out


def _takes_words(tp: Any) -> bool:
    return str in _args(tp) or any(isinstance(v, str) for v in _literals(tp))


WORD_FIELDS = _fields(_takes_words)
BOOL_FIELDS = _fields(lambda tp: tp is bool)


@pytest.fixture(autouse=True)
def _no_cross_rules(monkeypatch):
    """These tests are about how one value is read; rules between fields (a train_file without eval
    data, checkpointing switches that disagree) are tested in test_config.py."""
    import legaltune.config.load as load

    monkeypatch.setattr(load, "cross_checks", lambda *a: [])


# a field whose section refuses it without another one set (a rule inside the section, not a cross rule)
COMPANIONS = {"quantization.fp8_keep_transpose": ("load_in_fp8", "true")}


def _read(tmp_path, path: str, written: str, how: str) -> tuple[Any, list]:
    """(value read for `path`, problems) after writing `path: written` in a file or as --set."""
    section, key = path.split(".")
    lines = [(key, written)]
    if path in COMPANIONS:
        lines.append(COMPANIONS[path])
    if how == "file":
        f = tmp_path / "c.yaml"
        f.write_text(f"{section}:\n" + "".join(f"  {k}: {v}\n" for k, v in lines), encoding="utf-8")
        args: tuple = (f, [])
    else:
        args = (None, [f"{section}.{k}={v}" for k, v in lines])
    try:
        cfg = load_config(*args)
    except ConfigError as exc:
        return None, exc.problems
    return getattr(getattr(cfg, section), key), []


def test_schema_has_word_fields():
    names = {p for p, _, _ in WORD_FIELDS}
    # the fields the issue names, and that every section with strings is seen
    assert {"logging.eval_strategy", "logging.save_strategy", "speed.mode", "logging.run_name"} <= names
    assert len(WORD_FIELDS) >= 25 and len(BOOL_FIELDS) >= 10


@pytest.mark.parametrize("how", ["file", "set"])
@pytest.mark.parametrize("path,tp,field", WORD_FIELDS, ids=[p for p, _, _ in WORD_FIELDS])
def test_word_fields_keep_the_word(tmp_path, path, tp, field, how):
    choices = set(field.metadata.get("choices") or ()) | {v for v in _literals(tp) if isinstance(v, str)}
    for word, meaning in BOOL_WORDS.items():
        value, problems = _read(tmp_path, path, word, how)
        if word in _literals(tp):
            assert value == word and not problems, (path, word, value, problems)
        elif bool in _args(tp):
            # a bool is allowed here: the word means what `true`/`false` means for this field
            same, _ = _read(tmp_path, path, "true" if meaning else "false", how)
            assert value == same and not problems, (path, word, value, problems)
        elif choices and word not in choices:
            # rejected, naming the word as written (not False/True) and the valid choices
            assert problems, (path, word, value)
            text = " ".join(f"{p.message} {p.fix}" for p in problems)
            assert repr(word) in text and "(bool)" not in text, text
        else:
            assert value == word and not problems, (path, word, value, problems)
    if str in _args(tp) and not choices:
        for word in NUMBER_WORDS:
            value, problems = _read(tmp_path, path, word, how)
            if isinstance(value, str) or problems:
                assert value == word and not problems, (path, word, value, problems)


@pytest.mark.parametrize("how", ["file", "set"])
@pytest.mark.parametrize("path,tp,field", BOOL_FIELDS, ids=[p for p, _, _ in BOOL_FIELDS])
def test_bool_fields_stay_bools(tmp_path, path, tp, field, how):
    for word, meaning in {**BOOL_WORDS, "true": True, "false": False}.items():
        value, problems = _read(tmp_path, path, word, how)
        assert value is meaning and not problems, (path, word, value, problems)


def test_quoted_words_and_lists(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "logging:\n  eval_strategy: 'no'\n  save_strategy: \"no\"\n  report_to: [none]\n"
        "lora:\n  target_modules:\n    - q_proj\n    - on\n",
        encoding="utf-8",
    )
    cfg = load_config(f)
    assert (cfg.logging.eval_strategy, cfg.logging.save_strategy) == ("no", "no")
    assert cfg.lora.target_modules == ["q_proj", "on"]
    cfg = load_config(None, ["lora.target_modules=[q_proj, off]", "lora.target_modules=q_proj,v_proj"])
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert load_config(None, ["lora.target_modules=[q_proj, off]"]).lora.target_modules == ["q_proj", "off"]


def test_nulls_stay_null(tmp_path):
    for written in ("null", "~", "Null"):
        cfg = load_config(None, [f"logging.run_name={written}", f"data.system_prompt={written}"])
        assert cfg.logging.run_name is None and cfg.data.system_prompt is None


def test_word_survives_save_and_reload(tmp_path):
    from legaltune.config.load import save_config

    cfg = load_config(None, ["logging.eval_strategy=no", "logging.run_name=off", "speed.mode=off"])
    again = load_config(save_config(cfg, tmp_path / "config.yaml"))
    assert (again.logging.eval_strategy, again.logging.run_name, again.speed.mode) == ("no", "off", "off")
