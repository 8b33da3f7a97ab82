"""RUN_DIR/report.html: embedded plots, escaped Vietnamese, and graceful gaps (no eval rows, no files)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.servers import CHROMIUM_FLAGS
from tests.test_eval import make_tiny_run

IMG = re.compile(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_metrics(run: Path, *, with_eval: bool) -> None:
    rows = []
    for step in range(1, 7):
        rows.append(
            {
                "step": step,
                "epoch": step / 6,
                "loss": 2.5 - 0.2 * step,
                "lr": 1e-3 * min(1.0, step / 2),
                "grad_norm": 0.5,
                "tokens_per_s": 90.0 + step,
                "tokens": 300 * step,
                "trained_tokens": 150 * step,
                "peak_memory_gib": 0.7 + 0.01 * step,
                "elapsed_s": 3.0 * step,
            }
        )
        if with_eval and step % 3 == 0:
            rows.append(
                {"step": step, "epoch": step / 6, "eval_loss": 2.4 - 0.1 * step, "peak_memory_gib": 0.8}
            )
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (run / "metrics.jsonl").write_text(text + '{"step": 7, "loss"', encoding="utf-8")  # a line cut mid-write


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, tokenizer) -> Path:
    """A tiny run with metrics, data stats and a real eval.json whose texts need escaping."""
    from legaltune.config.load import load_config
    from legaltune.data.prepare import prepare_data
    from legaltune.evaluate.run_eval import evaluate_run, write_json_atomic

    run = make_tiny_run(tmp_path_factory.mktemp("report"), tokenizer)
    write_metrics(run, with_eval=True)
    stats = prepare_data(load_config(run / "config.yaml"), tokenizer).stats.to_dict()
    (run / "data_stats.json").write_text(json.dumps(stats, ensure_ascii=False), encoding="utf-8")
    result = evaluate_run(run, limit=2, max_new_tokens=2, batch_size=2, show_progress=False)
    result["questions"][0]["question"] = "Điều 35 <script>alert(1)</script> & “khoản 2”?"
    result["questions"][0]["tuned"]["answer"] = "Người lao động được nghỉ <b>không</b> cần báo trước."
    write_json_atomic(run / "eval.json", result)
    return run


def test_report_with_everything(evaluated_run):
    import matplotlib

    from legaltune.report.html import write_report

    backend = matplotlib.get_backend()
    path = write_report(evaluated_run)
    assert matplotlib.get_backend() == backend  # no global backend switch
    assert path == evaluated_run / "report.html"
    page = path.read_text(encoding="utf-8")
    assert '<meta charset="utf-8">' in page
    imgs = IMG.findall(page)
    alts = [alt for alt, _ in imgs]
    assert alts == [
        "train and eval loss vs step",
        "learning-rate schedule vs step",
        "throughput vs step",
        "peak memory vs step",
        "plan memory estimate by component vs measured peak",  # the local base dir resolves offline
    ]
    for _, b64 in imgs:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    # Vietnamese stays readable UTF-8; markup in run texts is escaped, never live
    assert "Điều 35 &lt;script&gt;alert(1)&lt;/script&gt; &amp; “khoản 2”?" in page
    assert "<script>" not in page and "<b>không</b>" not in page
    assert "Người lao động được nghỉ &lt;b&gt;không&lt;/b&gt;" in page
    for text in (
        "Evaluation: base vs tuned",
        "citation F1",
        "estimated peak",
        "measured peak",
        "model_name:",
    ):
        assert text in page, text
    assert "Thời gian thử việc tối đa là bao lâu?" in page or "Tuổi kết hôn của nữ?" in page
    assert not list(evaluated_run.glob(".report.html.*"))


def test_report_without_eval_rows_or_eval_json(tmp_path, tokenizer):
    from legaltune.report.html import write_report

    run = make_tiny_run(tmp_path, tokenizer)
    write_metrics(run, with_eval=False)
    page = write_report(run).read_text(encoding="utf-8")
    alts = [alt for alt, _ in IMG.findall(page)]
    assert "train and eval loss vs step" in alts and "learning-rate schedule vs step" in alts
    assert "No eval loss was logged" in page and "No eval.json yet" in page
    assert "No data_stats.json" in page


def test_report_of_a_bare_directory_does_not_touch_the_network(tmp_path):
    from legaltune.config.load import build_config, save_config
    from legaltune.report.html import write_report

    save_config(
        build_config({"model": {"model_name": "some-org/not-a-shipped-model"}}), tmp_path / "config.yaml"
    )
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert (
        "estimate unavailable: the architecture of some-org/not-a-shipped-model is not known offline" in page
    )
    assert "No metrics.jsonl rows yet" in page and "<img" not in page
    from legaltune.run.layout import RunError

    with pytest.raises(RunError, match="no such run"):
        write_report(tmp_path / "missing")
    (tmp_path / "not-a-run").mkdir()
    with pytest.raises(RunError, match="not a run directory"):
        write_report(tmp_path / "not-a-run")
    assert not (tmp_path / "not-a-run" / "report.html").exists()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium is not installed")
def test_report_renders_in_headless_chromium(evaluated_run, tmp_path):
    from legaltune.report.html import write_report

    shot = tmp_path / "report.png"
    cmd = [
        "chromium",
        *CHROMIUM_FLAGS,
        f"--screenshot={shot}",
        "--window-size=1200,2400",
        write_report(evaluated_run).as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    assert shot.stat().st_size > 50_000  # a blank or broken page compresses to a few KB


def test_report_plans_the_checkpointing_the_run_used():
    from legaltune.report.html import _run_checkpoint_layers

    assert _run_checkpoint_layers({"speed": {"checkpointing": "none"}}) == 0
    assert _run_checkpoint_layers({"speed": {"checkpointing": "offload 12/32"}}) == 12
    assert _run_checkpoint_layers({"speed": {"checkpointing": "offload"}}) is None  # every layer
    assert _run_checkpoint_layers({"speed": None}) is None and _run_checkpoint_layers(None) is None


def test_report_plans_the_forward_the_run_made():
    """The estimate is for what one forward held: the data's largest micro-batch, or the cap of one
    forward where the run split micro-batches (seed 000: 23,266 tokens, not 32 x 8,192)."""
    from legaltune.config.load import load_config
    from legaltune.report.html import _plan_estimate, _run_micro_batch

    split = {
        "plan": {"micro_batch": [1, 260008], "forward_tokens": 23266},
        "speed": {"checkpointing": "none"},
    }
    whole = {"plan": {"micro_batch": [1, 39961], "forward_tokens": None}, "speed": {"checkpointing": "none"}}
    assert _run_micro_batch(split) == (1, 23266) and _run_micro_batch(whole) == (1, 39961)
    assert _run_micro_batch({"plan": None}) is None and _run_micro_batch(None) is None
    cfg = load_config("configs/llama31-8b-h200.yaml")
    est = {name: _plan_estimate(cfg, None, s)[0] for name, s in (("split", split), ("whole", whole))}
    worst = _plan_estimate(cfg, None, {"speed": {"checkpointing": "none"}})[0]
    assert est["split"].tokens_per_micro_batch == 23266 and worst.tokens_per_micro_batch == 32 * 8192
    assert est["split"].peak_bytes < est["whole"].peak_bytes < worst.peak_bytes
    # a run that kept its input embeddings in host memory is planned without them on the GPU
    hosted = _plan_estimate(cfg, None, {**split, "plan": {**split["plan"], "embeddings_on_host": True}})[0]
    assert est["split"].peak_bytes - hosted.peak_bytes == pytest.approx(128256 * 4096 * 2, rel=1e-6)
