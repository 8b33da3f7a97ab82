"""The CLI: every subcommand has real help; unbuilt ones say so and exit non-zero."""

import subprocess
import sys

import pytest

from legaltune.cli import build_parser, main

COMMANDS = [
    "train",
    "plan",
    "data",
    "eval",
    "generate",
    "chat",
    "merge",
    "export",
    "report",
    "demo",
    "config",
    "corpus",
]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"legaltune {name}" in out and len(out.splitlines()) >= 3


def test_all_commands_registered():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)


def test_bad_config_is_reported_not_a_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "legaltune.cli", "plan", "configs/demo.yaml", "--set", "lora.r=0"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "lora.r: must be > 0" in proc.stderr and "Traceback" not in proc.stderr


def test_config_prints_resolved_yaml(capsys):
    assert main(["config", "configs/demo.yaml", "--set", "lora.r=4"]) == 0
    out = capsys.readouterr().out
    assert "r: 4" in out and "model_name: smollm2-135m-instruct" in out


def test_merge_reports_a_missing_adapter(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("{}")
    assert main(["merge", "--run", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert "no final adapter" in capsys.readouterr().err
