"""The run-directory module on its own: names, the lock, opening runs, checkpoint seals, resume choices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from legaltune.config.load import build_config, save_config
from legaltune.errors import UserError
from legaltune.run import naming, resume
from legaltune.run.checkpoint import SEAL, inspect_checkpoint, seal
from legaltune.run.layout import RunDir, RunError, find_adapter, open_run
from legaltune.run.lock import RunLock, RunLocked


def cfg_for(tmp_path: Path, **logging):
    return build_config({"logging": {"output_dir": str(tmp_path / "runs"), **logging}})


@pytest.mark.parametrize(
    "name, why",
    [
        ("../../../x", "contains '/'"),
        ("/abs/run", "contains '/'"),
        ("a:b", "contains ':'"),
        ("..", "is '..'"),
        ("", "is empty"),
        (".hidden", "starts with '.'"),
    ],
)
def test_run_name_must_be_one_directory_name(tmp_path, name, why):
    with pytest.raises(UserError, match=rf"logging\.run_name .*{why}"):
        naming.new_run_path(cfg_for(tmp_path, run_name=name))


def test_empty_output_dir_is_an_error(tmp_path):
    with pytest.raises(UserError, match="logging.output_dir is empty"):
        naming.new_run_path(build_config({"logging": {"output_dir": ""}}))


def test_bare_resume_matches_the_configs_runs_exactly(tmp_path):
    root = tmp_path / "runs"
    for name in ("s_norn-20250101-000000", "s_norn_big-20250301-000000", "s_norn-20250201-000000-1"):
        save_config(build_config({}), root / name / "config.yaml")
    (root / "s_norn-20250401-000000").mkdir()  # not a run: no config.yaml / run.json
    cfg = build_config({"logging": {"output_dir": str(root)}}, source=str(tmp_path / "s_norn.yaml"))
    names = [r.name for r in naming.runs_of_config(cfg)]
    assert names == ["s_norn-20250101-000000", "s_norn-20250201-000000-1"]
    # a run made by another config file of the same name is not this config's
    (root / "s_norn-20250201-000000-1" / "run.json").write_text(
        json.dumps({"config_source": "/elsewhere/s_norn.yaml"})
    )
    assert [r.name for r in naming.runs_of_config(cfg)] == ["s_norn-20250101-000000"]


def test_explicit_run_name_that_exists_needs_resume(tmp_path):
    cfg = cfg_for(tmp_path, run_name="mine")
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    assert naming.new_run_path(cfg) == tmp_path / "runs" / "mine"  # empty: fine
    (tmp_path / "runs" / "mine" / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match="already exists.*--resume"):
        naming.new_run_path(cfg)


def test_lock_second_writer_fails_naming_the_holder(tmp_path):
    lock = RunLock.acquire(tmp_path / "train.lock")
    try:
        with pytest.raises(RunLocked, match=rf"pid {os.getpid()} on .*started"):
            RunLock.acquire(tmp_path / "train.lock")  # a second open file: flock refuses it
    finally:
        lock.release()
    assert not (tmp_path / "train.lock").exists()


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_notice(tmp_path):
    import socket

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    (tmp_path / "train.lock").write_text(
        json.dumps({"pid": pid, "host": socket.gethostname(), "started": "x"})
    )
    notes: list[str] = []
    with RunLock.acquire(tmp_path / "train.lock", notes.append):
        held = json.loads((tmp_path / "train.lock").read_text())
        assert held["pid"] == os.getpid()
    assert len(notes) == 1 and f"pid {pid}" in notes[0] and "no longer running" in notes[0]


def test_lock_from_another_host_is_not_taken_over(tmp_path):
    (tmp_path / "train.lock").write_text(json.dumps({"pid": 1, "host": "gpu-node-7", "started": "x"}))
    with pytest.raises(RunLocked, match="another machine.*gpu-node-7.*delete"):
        RunLock.acquire(tmp_path / "train.lock")


def test_open_run_says_no_such_run_and_not_a_run(tmp_path):
    with pytest.raises(RunError, match="no such run"):
        open_run(tmp_path / "nope")
    (tmp_path / "parent" / "r1").mkdir(parents=True)
    (tmp_path / "parent" / "r1" / "config.yaml").write_text("{}")
    with pytest.raises(RunError, match="not a run directory.*holds runs: r1"):
        open_run(tmp_path / "parent")
    assert open_run(tmp_path / "parent" / "r1").path == tmp_path / "parent" / "r1"


def _adapter(d: Path) -> None:
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text("{}")
    (d / "adapter_model.safetensors").write_bytes(b"x")


def test_find_adapter_of_an_interrupted_run_points_at_what_exists(tmp_path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    run.config.write_text("{}")
    _adapter(run.partial_adapter)
    run.summary.write_text(json.dumps({"status": "interrupted", "step": 3, "max_steps": 6}))
    with pytest.raises(RunError, match=r"interrupted at step 3/6.*adapter-partial"):
        find_adapter(run.path)
    ref = find_adapter(run.partial_adapter)  # passed explicitly, it is accepted, with its run
    assert ref.adapter_dir == run.partial_adapter and ref.run == run
    _adapter(run.adapter)
    assert find_adapter(run.path).adapter_dir == run.adapter


def _checkpoint(run: RunDir, step: int, *, sealed: bool = True, max_steps: int = 6) -> Path:
    d = run.checkpoint(step)
    d.mkdir(parents=True)
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
    ):
        (d / name).write_bytes(b"0123456789")
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": max_steps}))
    if sealed:
        seal(d, step)
    return d


def _run(tmp_path: Path) -> tuple[RunDir, object]:
    cfg = build_config({"logging": {"output_dir": str(tmp_path)}})
    run = RunDir(tmp_path / "r")
    save_config(cfg, run.config)
    return run, cfg


def test_resume_takes_newest_sealed_checkpoint_and_sets_aside_the_rest(tmp_path):
    run, cfg = _run(tmp_path)
    _checkpoint(run, 2)
    _checkpoint(run, 3)
    _checkpoint(run, 4, sealed=False)
    (run.checkpoint(4) / "trainer_state.json").unlink()  # as the old non-atomic saving left it
    (run.checkpoints / ".tmp-checkpoint-5" / "checkpoint-5").mkdir(parents=True)
    rows = [{"step": s, "loss": 1.0} for s in (1, 2, 3, 4, 5)]
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "lo')
    notes: list[str] = []
    point = resume.prepare(run, cfg, notice=notes.append)
    assert point.checkpoint.path == run.checkpoint(3) and point.step == 3
    assert (run.set_aside / "checkpoint-4.incomplete").is_dir() and not run.checkpoint(4).exists()
    assert not (run.checkpoints / ".tmp-checkpoint-5").exists()
    text = "\n".join(notes)
    assert "checkpoint-4 is incomplete (trainer_state.json missing)" in text
    assert ".tmp-checkpoint-5" in text and "dropped 2 row(s) logged after step 3" in text
    assert [json.loads(x)["step"] for x in run.metrics.read_text().splitlines()] == [1, 2, 3]


def test_damaged_checkpoint_is_an_error_naming_the_file_and_the_fixes(tmp_path):
    run, cfg = _run(tmp_path)
    _checkpoint(run, 2)
    _checkpoint(run, 3)
    (run.checkpoint(3) / "optimizer.pt").write_bytes(b"01")  # truncated after sealing
    with pytest.raises(UserError) as err:
        resume.prepare(run, cfg)
    msg = str(err.value)
    assert "checkpoint-3" in msg and "optimizer.pt truncated or changed: 2 bytes, 10 when written" in msg
    assert f"--resume {run.checkpoint(2)}" in msg and "--weights-only" in msg
    point = resume.prepare(run, cfg, weights_only=True)
    assert point.checkpoint.step == 3
    # damaged weights cannot be continued from, weights-only or not
    (run.checkpoint(3) / "adapter_model.safetensors").unlink()
    with pytest.raises(UserError, match="adapter_model.safetensors missing") as err:
        resume.prepare(run, cfg, weights_only=True)
    assert "--weights-only" not in str(err.value)


def test_resume_from_an_older_checkpoint_sets_newer_ones_aside(tmp_path):
    run, cfg = _run(tmp_path)
    for s in (1, 2, 3):
        _checkpoint(run, s)
    point = resume.prepare(run, cfg, run.checkpoint(1))
    assert point.step == 1 and [p.name for _, p in run.checkpoint_dirs()] == ["checkpoint-1"]
    assert sorted(p.name for p in run.set_aside.iterdir()) == [
        "checkpoint-2.superseded",
        "checkpoint-3.superseded",
    ]


def test_finished_run_is_nothing_to_do_and_untouched(tmp_path):
    run, cfg = _run(tmp_path)
    _checkpoint(run, 6)
    _adapter(run.adapter)
    run.summary.write_text(json.dumps({"status": "finished", "step": 6, "max_steps": 6}))
    run.metrics.write_text('{"step": 7}\n')
    point = resume.prepare(run, cfg)
    assert point.finished and "nothing to do" in point.notices[0]
    assert run.metrics.read_text() == '{"step": 7}\n'


def test_resume_with_a_different_config_names_the_keys(tmp_path):
    run, _ = _run(tmp_path)
    other = build_config({"logging": {"output_dir": str(tmp_path)}, "training": {"learning_rate": 1e-3}})
    with pytest.raises(UserError, match=r"training\.learning_rate: 0\.0002 in the run, 0\.001 now"):
        resume.prepare(run, other)


def test_seal_lists_every_file_with_its_size(tmp_path):
    run, _ = _run(tmp_path)
    d = _checkpoint(run, 4)
    listed = json.loads((d / SEAL).read_text())["files"]
    assert listed == {p.name: 10 for p in d.iterdir() if p.suffix in (".pt", ".pth", ".safetensors")} | {
        "adapter_config.json": 10,
        "trainer_state.json": (d / "trainer_state.json").stat().st_size,
    }
    assert inspect_checkpoint(d).problems == {} and inspect_checkpoint(d).training_done is False


def test_rotation_keeps_the_newest_and_the_best(tmp_path):
    from legaltune.run.checkpoint import rotate

    run, _ = _run(tmp_path)
    for s in (1, 2, 3, 4, 5):
        _checkpoint(run, s)
    rotate(run.checkpoints, 2, str(run.checkpoint(2)))
    assert [s for s, _ in run.checkpoint_dirs()] == [2, 5]
    assert sorted(p.name for p in run.checkpoints.iterdir()) == [
        "checkpoint-2",
        "checkpoint-5",
    ]  # no leftovers
    rotate(run.checkpoints, None, None)  # no limit: nothing deleted
    assert [s for s, _ in run.checkpoint_dirs()] == [2, 5]
