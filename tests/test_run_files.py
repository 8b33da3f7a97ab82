"""What a run writes besides the adapter: one TensorBoard stream, no card naming a "[None]" base,
and report/eval/merged/GGUF files with the permissions every other file gets (umask, 0644)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.test_merge import make_run
from tests.test_train import base_cfg, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


def test_training_writes_one_tensorboard_stream_and_no_none_model_card(tmp_path, tokenizer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = base_cfg(
        tmp_path,
        logging={
            "report_to": ["tensorboard"],
            "save_strategy": "steps",
            "save_steps": 2,
            "eval_strategy": "no",
        },
        data={"val_split": 0.25},
    )
    run = train(cfg, tokenizer).run_dir
    assert (run / "checkpoints" / "checkpoint-2").is_dir()  # checkpoints were saved (and TRL's card hook ran)
    assert not (run / "checkpoints" / "runs").exists()
    cards = [p for p in run.rglob("README.md") if "[None]" in p.read_text(encoding="utf-8")]
    assert cards == []
    streams = {p.parent for p in run.rglob("events.out.tfevents.*")}
    assert streams == {run / "tensorboard"}
    tags: set[str] = set()
    for events in (run / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert "train/loss" in tags and "eval/loss" in tags  # the final evaluate() landed in the run's stream
    assert _mode(run / "report.html") == FILE_MODE == _mode(run / "config.yaml")
    for path in (run / "adapter").iterdir():
        assert _mode(path) == FILE_MODE, path


def test_eval_report_merge_and_gguf_files_get_the_usual_mode(tmp_path, tokenizer):
    from legaltune.evaluate.run_eval import evaluate_run
    from legaltune.export.gguf_export import export_gguf
    from legaltune.export.merge import merge_run
    from legaltune.report.html import write_report

    run = make_run(tmp_path / "r", tokenizer)
    (run / "eval.jsonl").write_text('{"question": "Điều 1?", "answer": "Có."}\n', encoding="utf-8")
    evaluate_run(run, data_file=run / "eval.jsonl", max_new_tokens=2, compare_base=False, show_progress=False)
    write_report(run)
    merged = merge_run(run, tmp_path / "merged", "fp32")
    gguf = export_gguf(run, tmp_path / "m.gguf", "f16")
    for path in (run / "eval.json", run / "report.html", gguf, *[p for p in merged.iterdir() if p.is_file()]):
        assert _mode(path) == FILE_MODE, (path, oct(_mode(path)))
    assert _mode(merged) == DIR_MODE
