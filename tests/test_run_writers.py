"""One writer per run, with real processes: a second `legaltune train` into a run being written fails at
once naming the holder; two new runs racing for one run_name leave one intact run and one clear error."""

from __future__ import annotations

import json
import time

from tests.train_cli import metrics_steps, run, start, summary, wait_until, write_config


def _lock_pid(run_dir) -> int | None:
    try:
        return json.loads((run_dir / "train.lock").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_second_writer_fails_at_once_naming_the_holder(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "runs", max_steps=10)
    run_dir = tmp_path / "runs" / "k"
    first = start("train", str(cfg))
    try:
        assert wait_until(lambda: _lock_pid(run_dir) == first.pid, first, timeout=180), first.communicate()[1]
        config_before = (run_dir / "config.yaml").read_text()
        t0 = time.monotonic()
        fresh = start("train", str(cfg))  # a new run into the same logging.run_name
        resumed = start("train", str(cfg), "--resume")  # a second writer into the running run
        fresh_err, resumed_err = fresh.communicate(timeout=300)[1], resumed.communicate(timeout=300)[1]
        refused_in = time.monotonic() - t0
        assert first.poll() is None, "the first run ended before the others were refused"
    finally:
        out, err = first.communicate(timeout=600)
    assert fresh.returncode == 2 and "Traceback" not in fresh_err
    assert f"{run_dir} already exists (logging.run_name 'k'); continue it with --resume" in fresh_err
    assert resumed.returncode == 2 and "Traceback" not in resumed_err
    assert f"is being written by another legaltune train: pid {first.pid} on " in resumed_err
    assert "started " in resumed_err and "train.lock" in resumed_err
    # the first run is untouched by either: its config, every step once, its own adapter
    assert first.returncode == 0, err[-2000:]
    assert (run_dir / "config.yaml").read_text() == config_before
    assert metrics_steps(run_dir) == list(range(1, 11))
    assert summary(run_dir)["status"] == "finished" and not (run_dir / "train.lock").exists()
    print(f"second writers refused in {refused_in:.1f} s (both, started together)")


def test_two_new_runs_racing_for_one_name(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "runs", max_steps=1)
    procs = [start("train", str(cfg)) for _ in range(2)]
    results = [(p.returncode, err) for p in procs for _, err in [p.communicate(timeout=600)]]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert "already exists" in loser and "Traceback" not in loser
    run_dir = tmp_path / "runs" / "k"
    assert metrics_steps(run_dir) == [1] and summary(run_dir)["status"] == "finished"
    assert not [p for p in (tmp_path / "runs").iterdir() if p.name != "k"]  # no leftover temporary run
    # and a resume of that finished run is nothing to do
    again = run("train", str(cfg), "--resume")
    assert again.returncode == 0 and "nothing to do" in again.stderr
