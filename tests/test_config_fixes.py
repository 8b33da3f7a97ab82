"""Every fix an error message suggests is valid when pasted into the config, and fixes the problem.

A suggestion is written as ``section.key: value`` (a line to paste under ``section:``) or as
``--set section.key=value``; these tests trigger each config rule, paste every suggestion the
message makes into the YAML file (or pass it as --set), and load the result again.
"""

from __future__ import annotations

import re

import pytest
import yaml

from legaltune.config.fields import ConfigError
from legaltune.config.load import load_config

SNIPPET = re.compile(r"(?<![\w./-])([a-z_0-9]+)\.([a-z_0-9]+): (\[[^\]]*\]|'[^']*'|[^\s,;()]+)")
SET_FLAG = re.compile(r"--set (\S+)")

# one bad config per rule; each must raise a problem whose fix suggests pasteable lines
BAD = {
    "both quantizations": {"quantization": {"load_in_4bit": True, "load_in_8bit": True}},
    "fp8 and 4-bit": {"quantization": {"load_in_fp8": True, "load_in_4bit": True}},
    "fp8 transposes without fp8": {"quantization": {"fp8_keep_transpose": True}},
    "max_steps 0": {"training": {"max_steps": 0}},
    "min_lr_rate without its scheduler": {"training": {"min_lr_rate": 0.1}},
    "early stopping without best model": {"training": {"early_stopping_patience": 2}},
    "best model without eval": {
        "training": {"load_best_model_at_end": True},
        "logging": {"eval_strategy": "no"},
    },
    "best model, strategies differ": {
        "training": {"load_best_model_at_end": True},
        "logging": {"save_strategy": "no"},
    },
    "best model, save_steps not a multiple": {
        "training": {"load_best_model_at_end": True},
        "logging": {"save_strategy": "steps", "eval_strategy": "steps", "save_steps": 50, "eval_steps": 20},
    },
    "save steps missing": {"logging": {"save_strategy": "steps"}},
    "eval steps missing": {"logging": {"eval_strategy": "steps"}},
    "no eval data": {"data": {"train_file": "x.jsonl"}},
    "alqac without corpus": {"data": {"format": "alqac"}},
    "checkpointing switches": {"optimization": {"gradient_checkpointing": False}},
    "empty targets": {"lora": {"target_modules": []}},
    "all-linear with names": {"lora": {"target_modules": ["all-linear", "q_proj"]}},
    "none with sinks": {"logging": {"report_to": ["none", "tensorboard"]}},
    "bad choice": {"logging": {"eval_strategy": "never"}},
    "bad scheduler": {"training": {"lr_scheduler_type": "cosin"}},
    "bad bias": {"lora": {"bias": "no"}},
    "unknown encoding": {"data": {"encoding": "utf-9"}},
}


def _write(tmp_path, raw: dict, extra: list[tuple[str, str, str]] = ()) -> str:
    """The YAML text of `raw`, with pasted `key: value` lines added under their sections."""
    text = yaml.safe_dump(raw, sort_keys=False)
    sections: dict[str, list[str]] = {}
    for section, key, value in extra:
        sections.setdefault(section, []).append(f"  {key}: {value}")
    lines = text.splitlines()
    for section, pasted in sections.items():
        if f"{section}:" in lines:
            at = lines.index(f"{section}:") + 1
            # a pasted key replaces the one the config had
            keys = {p.split(":")[0].strip() for p in pasted}
            while at < len(lines) and lines[at].startswith("  "):
                if lines[at].split(":")[0].strip() in keys:
                    del lines[at]
                    # a block list under the removed key goes with it
                    while at < len(lines) and lines[at].startswith("  - "):
                        del lines[at]
                else:
                    at += 1
            lines[at:at] = pasted
        else:
            lines += [f"{section}:", *pasted]
    f = tmp_path / "c.yaml"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(f)


def _problems(path: str, overrides: list[str] = ()) -> list:
    try:
        load_config(path, list(overrides))
    except ConfigError as exc:
        return exc.problems
    return []


def _snippets(text: str) -> list[tuple[str, str, str]]:
    return [m.groups() for m in SNIPPET.finditer(text)]


def _choices(fix: str) -> list[str]:
    """The values a 'use one of: a, b' fix lists, as shown."""
    if "use one of:" not in fix:
        return []
    return [c.strip() for c in fix.split("use one of:", 1)[1].split(",")]


@pytest.mark.parametrize("name", list(BAD))
def test_each_suggested_line_pastes_and_fixes(tmp_path, name):
    raw = BAD[name]
    problems = _problems(_write(tmp_path, raw))
    assert problems, name
    for problem in problems:
        pasted = _snippets(problem.fix) + [(*problem.path.split("."), c) for c in _choices(problem.fix)]
        assert pasted, f"{name}: the fix suggests no line to paste: {problem.fix}"
        for section, key, value in pasted:
            after = _problems(_write(tmp_path, raw, [(section, key, value)]))
            # the pasted line itself is accepted ...
            assert not [p for p in after if p.path == f"{section}.{key}" and p.message != problem.message], (
                name,
                f"{section}.{key}: {value}",
                after,
            )
            # ... and removes the problem it was suggested for
            assert (problem.path, problem.message) not in {(p.path, p.message) for p in after}, (
                name,
                f"{section}.{key}: {value}",
                after,
            )
            # the same suggestion as --set on top of the bad file works too
            after_set = _problems(_write(tmp_path, raw), [f"{section}.{key}={value}"])
            assert (problem.path, problem.message) not in {(p.path, p.message) for p in after_set}


def test_set_suggestions_in_override_errors_are_valid():
    for bad in ("lora.r", "lr=1"):
        with pytest.raises(ConfigError) as info:
            load_config(None, [bad])
        (flag,) = SET_FLAG.findall(str(info.value))
        load_config(None, [flag])  # the example itself loads


def test_data_error_suggestions_are_valid_config_lines(tmp_path):
    """Suggestions inside data and template errors are config lines too."""
    from legaltune.data import format as fmt
    from legaltune.data import prepare

    texts = [
        "(set data.on_bad_record: skip to skip and count such records)",
        open(prepare.__file__, encoding="utf-8").read(),
        open(fmt.__file__, encoding="utf-8").read(),
    ]
    found = [s for t in texts for s in _snippets(t) if s[0] == "data"]
    assert len(found) >= 3
    for section, key, value in found:
        probs = _problems(_write(tmp_path, {}, [(section, key, value)]))
        assert not [p for p in probs if p.path == f"{section}.{key}"], (section, key, value, probs)
