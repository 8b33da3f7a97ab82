"""A full disk: `legaltune train` into a size-limited tmpfs says what failed, where and how much space is
left, leaves nothing that looks complete, and the run resumes once there is space. `merge`,
`export gguf`, `eval` and `report` writing into a full tmpfs say the same, and leave nothing behind.

The tmpfs is mounted by tests/full_disk_driver.py, as root or in a user namespace
(`unshare --user --map-root-user --mount`); where neither can mount, the test is skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train_cli import env

DRIVER = Path(__file__).with_name("full_disk_driver.py")


def _drive(tmp_path: Path, size: str, *sets: str) -> dict:
    return _run_driver([str(tmp_path), size, *sets])


def _run_driver(args: list[str]) -> dict:
    """The driver's JSON result; skipped where no size-limited tmpfs can be mounted."""
    cmd = [sys.executable, str(DRIVER), *args]
    if os.geteuid() != 0:
        if shutil.which("unshare") is None:
            pytest.skip("mounting a size-limited tmpfs needs root or unshare")
        cmd = ["unshare", "--user", "--map-root-user", "--mount", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=900)
    if proc.returncode != 0 and not proc.stdout.strip():
        pytest.skip(f"cannot run the tmpfs driver here: {proc.stderr.strip()[-300:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "no_mount" in out:
        pytest.skip(f"cannot mount a tmpfs here: {out['no_mount'].strip()}")
    return out


@pytest.mark.parametrize(
    "size, sets, what",
    [
        ("3m", (), "checkpoint"),  # the tokenizer's JSON (Python's own write: errno 28)
        ("5m", (), "checkpoint"),  # optimizer.pt (torch.save's writer: "unexpected pos")
        ("3m", ("save_strategy=no",), "adapter"),  # no checkpoints: the final adapter's tokenizer
    ],
    ids=["checkpoint-json", "checkpoint-torch-save", "final-adapter"],
)
def test_full_disk_is_a_clear_error_and_the_run_resumes(tmp_path, size, sets, what):
    out = _drive(tmp_path, size, *sets)
    first = out["first"]
    err = first["stderr"]
    assert first["rc"] == 2, err
    assert "Traceback" not in err
    assert re.search(rf"error: no space left on device while writing {what} \S+/runs/k/", err), err
    assert re.search(r"\(\d+(\.\d)? (B|KiB|MiB) free of \d\.\d MiB on the file system of ", err), err
    assert "--resume" in err
    files = first["files"]
    # nothing that looks complete: no checkpoint-N, no adapter/, no summary; no temporary leftovers
    assert not [f for f in files if re.search(r"checkpoints/checkpoint-\d+$", f)], files
    assert not [f for f in files if f.startswith("k/adapter") or f.endswith("train_summary.json")], files
    assert not [f for f in files if ".tmp-" in f or f.endswith(".partial")], files
    assert "k/run.json" in files and "k/config.yaml" in files
    resumed = out["resumed"]
    assert resumed["rc"] == 0, resumed["stderr"]
    assert resumed["summary"]["status"] == "finished" and resumed["summary"]["step"] == 2
    assert "k/adapter/adapter_model.safetensors" in resumed["files"]
    assert "k/adapter/tokenizer.json" in resumed["files"]


def _drive_command(tmp_path: Path, run: Path | None, *args: str) -> dict:
    """Run one command against a full 8 MiB tmpfs ("{mnt}" in args), with ``run`` copied onto it."""
    return _run_driver(["command", str(tmp_path), "8m", str(run or "-"), *args])


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """Runs of random 2-layer Llamas, small enough to copy onto the tmpfs: one with its eval data
    (eval, report), one whose adapter names its base on disk (merge, export)."""
    from tests.test_eval import make_tiny_run
    from tests.test_merge import make_run

    return {
        "eval": make_tiny_run(tmp_path_factory.mktemp("full-disk-eval"), tokenizer),
        "merge": make_run(tmp_path_factory.mktemp("full-disk-merge"), tokenizer),
    }


@pytest.mark.parametrize(
    "on_tmpfs, args, what, target",
    [
        (False, ("merge", "--run", "{run}", "--output", "{mnt}/merged"), "merged model", "merged"),
        (False, ("export", "gguf", "--run", "{run}", "--output", "{mnt}/m.gguf"), "GGUF file", "m.gguf"),
        (
            True,
            ("eval", "--run", "{mnt}/run", "--max-new-tokens", "2", "--no-base"),
            "eval results",
            "run/eval.json",
        ),
        (True, ("report", "{mnt}/run"), "report", "run/report.html"),
    ],
    ids=["merge", "export-gguf", "eval", "report"],
)
def test_full_disk_beyond_train_is_a_clear_error(tmp_path, tiny_runs, on_tmpfs, args, what, target):
    tiny_run = tiny_runs["eval" if on_tmpfs else "merge"]
    out = _drive_command(
        tmp_path, tiny_run if on_tmpfs else None, *(a.replace("{run}", str(tiny_run)) for a in args)
    )
    err = out["stderr"]
    assert out["rc"] == 2, err
    assert "Traceback" not in err
    assert re.search(
        rf"error: no space left on device while writing {what} \S+/small/{re.escape(target)} ", err
    ), err
    assert re.search(r"\(\d+(\.\d)? (B|KiB|MiB) free of \d\.\d MiB on the file system of ", err), err
    # nothing written that looks complete, and no temporary leftovers: only the copied run is there
    copied = sorted(f"run/{p.relative_to(tiny_run)}" for p in tiny_run.rglob("*")) if on_tmpfs else []
    assert out["files"] == (["run", *copied] if on_tmpfs else []), out["files"]
