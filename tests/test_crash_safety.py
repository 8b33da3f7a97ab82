"""kill -9 at chosen and random moments, resume after each: the run always finishes, with the adapter of
an uninterrupted run bit for bit, and no kill ever leaves a state that resume refuses.

Real processes: `legaltune train` runs as a subprocess (embedded model, a checkpoint every step) and
is killed with SIGKILL while it writes a checkpoint, just after one is sealed, at a random time
(start-up, data, a step), while it writes the final adapter, and between the adapter and the
summary. After each kill the run directory is checked (every checkpoint-N complete, nothing that
looks finished but is not) and the next session resumes it. The short variant runs in CI; the long
one (`pytest -m long`) runs many more kills at random moments.
"""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from legaltune.run.checkpoint import SEAL, inspect_checkpoint
from legaltune.run.layout import RunDir
from tests.train_cli import kill9, metrics_steps, run, start, summary, wait_until, write_config

MODES = ("during-checkpoint", "after-checkpoint", "random", "during-adapter", "after-adapter")


def _names(d: Path) -> list[str]:
    return [p.name for p in d.iterdir()] if d.is_dir() else []


def _sealed_steps(run_dir: Path) -> set[int]:
    return {c.step for c in map(inspect_checkpoint, _ckpts(run_dir)) if c.sealed}


def _ckpts(run_dir: Path) -> list[Path]:
    return [p for _, p in RunDir(run_dir).checkpoint_dirs()]


def _trigger(mode: str, run_dir: Path, proc, rng: random.Random, window_s: float) -> bool:
    """Wait for the moment ``mode`` names (True), or for the process to end first (False)."""
    ckpts = run_dir / "checkpoints"
    if mode == "during-checkpoint":
        # the first sign of a new checkpoint being written: its temporary directory, or (were saving not
        # atomic) a checkpoint-N that was not there before
        before = set(_names(ckpts))

        def writing() -> bool:
            new = set(_names(ckpts)) - before
            return any(n.startswith((".tmp-checkpoint-", "checkpoint-")) for n in new)

        hit = wait_until(writing, proc)
        time.sleep(rng.uniform(0, 0.03))
        return hit
    if mode == "after-checkpoint":
        before = _sealed_steps(run_dir) if run_dir.is_dir() else set()
        return wait_until(lambda: bool(_sealed_steps(run_dir) - before), proc, poll=0.005)
    if mode == "during-adapter":
        hit = wait_until(lambda: any(n.startswith(".adapter.") for n in _names(run_dir)), proc)
        time.sleep(rng.uniform(0, 0.02))
        return hit
    if mode == "after-adapter":
        return wait_until(lambda: (run_dir / "adapter").is_dir(), proc)
    time.sleep(rng.uniform(0.5, window_s))  # random: start-up, data preparation, the first steps and saves
    return proc.poll() is None


def _check_after_kill(run_dir: Path, reference: Path) -> None:
    """What a kill may leave: complete checkpoints, temporary names, an adapter only when it is final."""
    for ckpt in _ckpts(run_dir):
        info = inspect_checkpoint(ckpt)
        assert info.sealed and not info.problems, f"{ckpt.name}: {info.problems or 'not sealed'}"
    if (run_dir / "adapter").exists():
        assert _tensors_equal(run_dir, reference), "an adapter/ that is not the final one"


def _adapter_file(run_dir: Path) -> Path:
    return run_dir / "adapter" / "adapter_model.safetensors"


def _tensors_equal(a: Path, b: Path) -> bool:
    ta, tb = load_file(str(_adapter_file(a))), load_file(str(_adapter_file(b)))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def kill_and_resume(tmp_path: Path, reference: Path, *, schedule: list[str], steps: int, seed: int):
    """One session per entry of ``schedule`` (the moment its kill waits for), then one to the end."""
    rng = random.Random(seed)
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "runs", max_steps=steps)
    run_dir = tmp_path / "runs" / "k"
    # random kills land in start-up, data preparation or the first two steps (measured on the reference
    # run), so that every kill of the schedule comes before the run can end
    train_s = float(summary(reference)["train"]["train_runtime"])
    window_s = reference_wall[reference] - train_s + 2 * train_s / steps
    log: list[tuple[str, bool]] = []
    while True:
        args = ("train", str(cfg), "--resume") if run_dir.exists() else ("train", str(cfg))
        proc = start(*args)
        if len(log) < len(schedule):
            mode = schedule[len(log)]
            fired = _trigger(mode, run_dir, proc, rng, window_s)
            if fired and proc.poll() is None:
                kill9(proc)
                log.append((mode, True))
                _check_after_kill(run_dir, reference)
                continue
            log.append((mode, False))  # the process ended before the moment came
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"session after kills {log} refused or failed:\n{err[-3000:]}"
        assert "Traceback" not in err
        if summary(run_dir).get("status") == "finished":
            return run_dir, log


def _check_finished_like_reference(run_dir: Path, reference: Path, steps: int) -> None:
    assert _tensors_equal(run_dir, reference)
    digest = [hashlib.sha256(_adapter_file(d).read_bytes()).hexdigest() for d in (run_dir, reference)]
    assert digest[0] == digest[1]  # the file itself, not only the tensors
    assert metrics_steps(run_dir) == list(range(1, steps + 1))
    got, want = summary(run_dir), summary(reference)
    assert (got["status"], got["step"], got["max_steps"]) == ("finished", steps, steps)
    assert got["train"]["train_loss"] == pytest.approx(want["train"]["train_loss"], rel=1e-9)
    leftovers = [p for p in run_dir.rglob("*") if p.name.startswith(".") or p.name.endswith(".partial")]
    assert (
        not leftovers and not (run_dir / "train.lock").exists() and not (run_dir / "adapter-partial").exists()
    )
    for ckpt in _ckpts(run_dir):
        assert (ckpt / SEAL).is_file()


reference_wall: dict[Path, float] = {}  # seconds the uninterrupted session took, start-up included


def _reference(tmp_path: Path, steps: int) -> Path:
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "runs", max_steps=steps)
    t0 = time.monotonic()
    done = run("train", str(cfg))
    assert done.returncode == 0, done.stderr[-3000:]
    reference_wall[tmp_path / "runs" / "k"] = time.monotonic() - t0
    return tmp_path / "runs" / "k"


@pytest.fixture(scope="module")
def reference4(tmp_path_factory) -> Path:
    return _reference(tmp_path_factory.mktemp("reference4"), 4)


def test_kills_at_every_kind_of_moment_then_resume_gives_the_uninterrupted_adapter(tmp_path, reference4):
    run_dir, log = kill_and_resume(tmp_path, reference4, schedule=list(MODES), steps=4, seed=15)
    print(f"{sum(k for _, k in log)} kills survived of {len(log)} tried: {log}")
    assert sum(killed for _, killed in log) >= 4, log  # the moments were reached, the kills happened
    _check_finished_like_reference(run_dir, reference4, 4)
    # resuming the finished run again: nothing to do, exit 0, nothing rewritten
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    again = run("train", str(tmp_path / "c.yaml"), "--resume")
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.parametrize("seed", [1, 2])
def test_many_random_kills(tmp_path_factory, seed):
    """40 kills over two seeds: mid-checkpoint, just after a checkpoint and at random moments in a
    random order, then during and after the final adapter."""
    steps = 16
    rng = random.Random(seed)
    middle = ["during-checkpoint"] * 7 + ["after-checkpoint"] * 5 + ["random"] * 6
    rng.shuffle(middle)
    reference = _reference(tmp_path_factory.mktemp(f"reference{seed}"), steps)
    tmp = tmp_path_factory.mktemp(f"kills{seed}")
    schedule = [*middle, "during-adapter", "after-adapter"]
    run_dir, log = kill_and_resume(tmp, reference, schedule=schedule, steps=steps, seed=seed)
    print(f"seed {seed}: {sum(k for _, k in log)} kills survived of {len(log)} tried: {log}")
    assert sum(k for _, k in log) >= 16, log
    _check_finished_like_reference(run_dir, reference, steps)
