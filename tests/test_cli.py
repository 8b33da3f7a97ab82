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


def _subparsers(parser=None, prefix=()):
    """{"corpus show": parser, ...}: every command and nested subcommand, by the words that call it."""
    import argparse

    out = {}
    for action in (parser or build_parser())._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[" ".join((*prefix, name))] = sub
                out.update(_subparsers(sub, (*prefix, name)))
    return out


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
    assert "r: 4" in out and "model_name: gemma-3-270m" in out


def test_merge_reports_a_missing_adapter(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("{}")
    assert main(["merge", "--run", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert "no final adapter" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(_subparsers()))
def test_every_flag_and_argument_has_help_and_shows_its_default(name, capsys):
    parser = _subparsers()[name]
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help and action.help.strip(), (
            f"{name} {action.option_strings or action.dest}: no help text"
        )
    with pytest.raises(SystemExit):
        main([*name.split(), "--help"])
    out = " ".join(capsys.readouterr().out.split())  # unwrap argparse's line breaks
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, [], "==SUPPRESS=="):
            assert f"(default: {action.default})" in out, (name, action.option_strings)
            assert out.count("default") == out.count("(default: "), out  # said once, one way


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"legaltune {version('legaltune')}"


def test_defaults_that_cpu_users_get():
    sub = _subparsers()
    chat = {a.dest: a.default for a in sub["chat"]._actions}
    assert chat["max_new_tokens"] <= 256


def test_report_takes_run_like_the_other_commands(tmp_path, capsys):
    assert main(["report", "--run", str(tmp_path), str(tmp_path)]) == 2
    assert "once" in capsys.readouterr().err
    assert main(["report"]) == 2


def test_overwrite_errors_name_the_flag(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("taken", encoding="utf-8")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    for argv in (
        ["merge", "--run", str(tmp_path), "--output", str(out)],
        ["export", "gguf", "--run", str(tmp_path), "--output", str(gguf)],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "legaltune.cli", *argv], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 2 and "pass --overwrite" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_data_check_with_data_and_model_flags(tmp_path):
    """`data check --data FILE --model NAME` (no config): it sets logging.eval_strategy=no itself,
    which must be read as the word, not YAML 1.1's false."""
    import json

    f = tmp_path / "qa.jsonl"
    f.write_text(
        json.dumps(
            {"question": "Thử việc tối đa bao lâu?", "answer": "Không quá 180 ngày."}, ensure_ascii=False
        )
        + "\n",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "legaltune.cli", "data", "check", "--data", str(f)]
        + ["--model", "smollm2-135m-instruct", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["train"]["records"] == 1 and stats["train"]["examples"] == 1


def test_exit_codes_internal_failure_and_interrupt(monkeypatch, capsys):
    """A bug is exit 3 with its traceback and a line saying it is one; Ctrl-C is 130; bad input 2."""
    import legaltune.cli as cli

    def boom(args):
        raise RuntimeError("an internal invariant broke")

    def ctrl_c(args):
        raise KeyboardInterrupt

    parser = cli.build_parser

    def with_func(func):
        def build():
            p = parser()
            p._subparsers._group_actions[0].choices["config"].set_defaults(func=func)
            return p

        return build

    monkeypatch.setattr(cli, "build_parser", with_func(boom))
    assert main(["config"]) == cli.EXIT_INTERNAL == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: an internal invariant broke" in err
    assert "internal error (RuntimeError): this is a legaltune bug" in err
    monkeypatch.setattr(cli, "build_parser", with_func(ctrl_c))
    assert main(["config"]) == cli.EXIT_INTERRUPTED == 130
    monkeypatch.setattr(cli, "build_parser", parser)
    assert main(["config", "configs/demo.yaml", "--set", "lora.r=0"]) == cli.EXIT_USAGE == 2
    assert "Traceback" not in capsys.readouterr().err


def _command_raising(monkeypatch, exc: BaseException) -> None:
    """Make `legaltune config` raise ``exc`` from inside the command, as a library call in it would."""
    import legaltune.cli as cli

    def raises(args):
        raise exc

    parser = cli.build_parser

    def build():
        p = parser()
        p._subparsers._group_actions[0].choices["config"].set_defaults(func=raises)
        return p

    monkeypatch.setattr(cli, "build_parser", build)


def test_a_plain_value_error_is_internal_not_bad_input(monkeypatch, capsys):
    """A ValueError that no code classified as the user's (a library's, or a broken invariant) is a bug:
    exit 3 with its traceback, never "bad input" without one."""
    _command_raising(monkeypatch, ValueError("shapes (3,) and (4,) not aligned"))
    assert main(["config"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: shapes (3,) and (4,) not aligned" in err
    assert "internal error (ValueError): this is a legaltune bug" in err
    assert not err.startswith("error: ")


def _user_errors() -> list[BaseException]:
    from legaltune.config.fields import ConfigError, Problem
    from legaltune.data.schemas import RecordError
    from legaltune.errors import InputError, UserError
    from legaltune.model.arch import ModelNameError
    from legaltune.records.read import DataError
    from legaltune.run.layout import RunError

    return [
        UserError("run directory r is locked by pid 1"),
        InputError("--limit must be ≥ 1 (got 0)"),
        ConfigError([Problem("lora.r", "must be > 0")]),
        DataError("train.jsonl:3: not JSON"),
        RecordError("messages", "must be a list"),
        ModelNameError("cannot load model 'llama-9000'"),
        RunError("runs/x: no such run"),
        FileNotFoundError(2, "No such file or directory", "nope.yaml"),
        PermissionError(13, "Permission denied", "/root/x"),
    ]


@pytest.mark.parametrize("exc", _user_errors(), ids=lambda e: type(e).__name__)
def test_user_errors_are_exit_2_without_traceback(monkeypatch, capsys, exc):
    _command_raising(monkeypatch, exc)
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {exc}\n"  # the message alone: no traceback, no "internal error" line


def test_domain_errors_are_user_errors_and_still_value_errors():
    """The rule is UserError → exit 2; the domain errors are UserErrors, and stay ValueErrors for callers
    (and tests) that catch one."""
    import inspect

    import legaltune.config.fields
    import legaltune.data.format
    import legaltune.data.schemas
    import legaltune.export.modelfile
    import legaltune.model.arch
    import legaltune.model.lora
    import legaltune.plan.params
    import legaltune.records.encoding
    import legaltune.records.read
    import legaltune.serve.prompt
    import legaltune.train.init_adapter
    import legaltune.train.trainer
    from legaltune.errors import InputError, UserError

    modules = [
        legaltune.config.fields,
        legaltune.data.format,
        legaltune.data.schemas,
        legaltune.export.modelfile,
        legaltune.model.arch,
        legaltune.model.lora,
        legaltune.plan.params,
        legaltune.records.encoding,
        legaltune.records.read,
        legaltune.serve.prompt,
        legaltune.train.init_adapter,
        legaltune.train.trainer,
    ]
    errors = {
        cls
        for m in modules
        for _, cls in inspect.getmembers(m, inspect.isclass)
        if issubclass(cls, ValueError) and cls.__module__ == m.__name__
    } | {InputError}
    assert len(errors) >= 13, errors
    for cls in errors:
        assert issubclass(cls, UserError) and issubclass(cls, ValueError), cls
