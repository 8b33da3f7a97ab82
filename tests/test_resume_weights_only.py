"""`train --resume --weights-only`, run as a user runs it (`legaltune train` subprocesses on the embedded
model): a checkpoint without its optimizer state is refused by a plain `--resume`, naming the file and
the flag, and `--weights-only` continues from its weights and finishes the run on schedule.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from legaltune.run.checkpoint import inspect_checkpoint
from legaltune.run.layout import RunDir
from tests.train_cli import kill9, metrics_steps, run, start, summary, wait_until, write_config

pytestmark = pytest.mark.slow


def _sealed(run_dir: Path) -> list[Path]:
    return [p for _, p in RunDir(run_dir).checkpoint_dirs() if inspect_checkpoint(p).sealed]


def test_missing_optimizer_is_refused_and_weights_only_finishes(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "runs", max_steps=4, save_total_limit=None)
    run_dir = tmp_path / "runs" / "k"
    proc = start("train", str(cfg))
    # stopped hard once two checkpoints are complete: a run with steps still to train
    assert wait_until(lambda: len(_sealed(run_dir)) >= 2, proc), proc.communicate()[1][-2000:]
    kill9(proc)
    newest = _sealed(run_dir)[-1]
    step = inspect_checkpoint(newest).step
    assert step < 4, "the run finished before it was killed; nothing left to resume"
    (newest / "optimizer.pt").unlink()

    plain = run("train", str(cfg), "--resume")
    assert plain.returncode == 2, plain.stderr
    assert "Traceback" not in plain.stderr
    assert f"{newest.name} is damaged: optimizer.pt missing" in plain.stderr, plain.stderr
    assert "--weights-only" in plain.stderr
    assert not (run_dir / "adapter").exists() and (newest / "adapter_model.safetensors").is_file()

    weights = run("train", str(cfg), "--resume", "--weights-only")
    assert weights.returncode == 0, weights.stderr
    assert f"--weights-only: continuing from {newest.name}'s weights without optimizer.pt missing" in (
        weights.stderr
    ), weights.stderr
    done = summary(run_dir)
    assert done["status"] == "finished" and done["step"] == 4, done
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert metrics_steps(run_dir) == [1, 2, 3, 4]  # one row per step: the resumed part continues the log
