"""The train-step benchmark harness (benchmarks/train_step.py) end to end on the CPU, in --quick mode.

The harness runs on the GPU machine; this keeps it working between GPU runs: rows run in child
processes, results come back as JSON with tokens/s and legaltune's plan estimate per row and shape.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "train_step.py"
ROWS = ("hf", "legaltune-offload", "legaltune-nockpt")


def load_harness() -> ModuleType:
    """Import the script as a module; its top level is stdlib only."""
    return load_benchmark(SCRIPT.name, "train_step_harness")


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    return load_harness()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench") / "train_step.json"
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p)
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--arch",
        "smollm2-135m",
        "--layers",
        "2",
        "--rows",
        ",".join(ROWS),
        # Three rows at once: each child spends most of its time importing torch/transformers/peft,
        # and --quick timings are not measurements anyway.
        "--jobs",
        "3",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text(encoding="utf-8"))


def test_quick_run_measures_every_row(quick_run):
    _, data = quick_run
    rows = data["rows"]
    assert [r["row"] for r in rows] == list(ROWS)  # one shape (64x2) per row, in the requested order
    for r in rows:
        assert r["status"] == "ok", r
        assert (r["seq"], r["batch"], r["tokens_per_step"]) == (64, 2, 128)
        assert r["tokens_per_s"] > 0
        assert len(r["step_s"]) == 2 and len(r["warmup_s"]) == 1
        assert r["trainable_params"] > 0
        assert r["row_wall_s"] > 0
        assert r["flops_per_token"] > 0
        assert math.isfinite(r["loss"]) and 0 < r["loss"] < 20  # random tokens: near ln(vocab)


def test_quick_run_has_plan_estimates(quick_run):
    _, data = quick_run
    for r in data["rows"]:
        assert r["plan_peak_gib"] > 0
        assert sum(r["plan_components_gib"].values()) == pytest.approx(r["plan_peak_gib"])
        assert r["plan_applies"] is True and r["plan_note"] is None
        # On a CPU nothing is measured, so there is no error to report (the fields are still there).
        assert "plan_error_pct" in r and "plan_within_target" in r
        if r["device"] == "cpu":
            assert "peak_alloc_gib" not in r
            assert r["plan_error_pct"] is None and r["mfu"] is None
    modes = {r["row"]: r["plan_checkpointing"] for r in data["rows"]}
    assert modes == {"hf": True, "legaltune-offload": "unsloth", "legaltune-nockpt": False}


def test_quick_run_metadata_and_table(quick_run):
    stdout, data = quick_run
    assert "--quick" in data["command"] and "train_step.py" in data["command"]
    assert data["versions"]["torch"] and data["versions"]["transformers"] and data["versions"]["peft"]
    assert data["settings"]["shapes"] == ["64x2"] and data["settings"]["layers"] == 2
    assert data["date"] and data["total_wall_s"] > 0
    assert all(r["ratio_vs"] == "hf" for r in data["rows"])  # no unsloth row: ratios against hf
    assert "tok/s" in stdout and "plan GiB" in stdout
    for name in ROWS:
        assert name in stdout


def test_flops_and_plan_inputs_match_the_reference(harness):
    arch = harness.plan_arch("llama-3.1-8b", None)
    # DESIGN.md: ≈ 31.6 GFLOP/token at 2048 (2 × forward); the documented formula gives 31.1.
    assert harness.flops_per_token(arch, 2048) == pytest.approx(31.09e9, rel=1e-3)
    assert harness.flops_per_token(arch, 8192) > harness.flops_per_token(arch, 2048)
    # The plan's calibration point: HF + PEFT with checkpointing, 8,192 tokens → 31.8 GiB estimated.
    plan = harness.plan_fields(arch, "hf", 8192, 1, 31.3, 2)
    assert plan["plan_peak_gib"] == pytest.approx(31.8, abs=0.1)
    assert plan["plan_error_pct"] == pytest.approx(1.6, abs=0.2) and plan["plan_within_target"]
    assert harness.plan_fields(arch, "unsloth", 8192, 1, None, 2)["plan_applies"] is False
    assert harness.plan_fields(arch, "hf+qlora", 8192, 1, None, 2)["plan_applies"] is False
    assert harness.plan_fields(arch, "legaltune-offload+qlora", 8192, 1, None, 2)["plan_applies"] is True


@pytest.mark.parametrize(
    "variant,seq,batch,measured",
    [
        # H100 peaks measured in docs/performance.md: 8k tokens and one real step at 262k
        ("legaltune-lean", 8192, 1, 17.21),
        ("legaltune-lean+qlora", 2048, 4, 7.78),
        ("legaltune-lean", 262144, 1, 60.55),
        ("legaltune-lean+qlora", 262144, 1, 51.24),
        ("legaltune-fast", 8192, 1, 50.09),
    ],
)
def test_plan_matches_the_measured_speed_engine_peaks(harness, variant, seq, batch, measured):
    """The speed engine's memory model against measured peaks, short and long sequences alike:
    over by a few percent (the safe side for speed: auto), never under."""
    arch = harness.plan_arch("llama-3.1-8b", None)
    plan = harness.plan_fields(arch, variant, seq, batch, measured, 2)
    assert 0 <= plan["plan_error_pct"] <= 3.0, plan


def test_row_selection(harness):
    assert harness.expand_variants("hf,unsloth", qlora=True) == ["hf", "unsloth", "hf+qlora", "unsloth+qlora"]
    assert harness.expand_variants("hf,unsloth", qlora=False, only_qlora=True) == [
        "hf+qlora",
        "unsloth+qlora",
    ]
    # the default set is every row but the x-* speed-layer probes, which run only when named
    assert harness.expand_variants(None, qlora=False) == [r for r in harness.ROWS if not r.startswith("x-")]
    assert harness.expand_variants("x-liger-nockpt", qlora=False) == ["x-liger-nockpt"]
    with pytest.raises(SystemExit, match="unknown"):
        harness.expand_variants("hf,nope", qlora=False)
    assert harness.parse_shapes("2048x4,8192x1") == [(2048, 4), (8192, 1)]
    with pytest.raises(SystemExit):
        harness.parse_shapes("2048")


def test_saved_random_model_loads(harness, tmp_path):
    """The directory Unsloth and the 4-bit rows load from: config, finite weights, a tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    try:
        assert harness.main(["--save-model", str(tmp_path), "--arch", "smollm2-135m", "--layers", "1"]) == 0
    finally:
        torch.set_num_threads(threads)  # the saver limits threads for its own process
    assert harness.model_dir_ready(tmp_path, "smollm2-135m", 1)
    assert not harness.model_dir_ready(tmp_path, "smollm2-135m", 2)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.config.num_hidden_layers == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token is not None


def test_rows_waiting_for_the_saved_model_fail_clearly(harness, tmp_path):
    """A row that needs the saved model reports the saver's failure or the deadline, never hangs."""
    ctx = harness.Ctx("unsloth", False, "smollm2-135m", 1, 64, "cpu", "float32", tmp_path, deadline=0.0)
    with pytest.raises(TimeoutError):
        ctx.wait_for_model_dir()
    (tmp_path / harness.FAILED).write_text("RuntimeError: disk full", encoding="utf-8")
    with pytest.raises(RuntimeError, match="disk full"):
        ctx.wait_for_model_dir()
    with pytest.raises(RuntimeError, match="none was prepared"):
        harness.Ctx("unsloth", False, "smollm2-135m", 1, 64, "cpu", "float32", None, 0.0).wait_for_model_dir()


def test_profile_summary_counts_busy_time_once_and_sorts_kernels_by_kind(harness):
    """The profile summary's GPU busy time is the union of kernel intervals (two streams overlapping
    count once), idle = wall - busy, and kernels land in their kind (GEMM, attention, copies...)."""
    from types import SimpleNamespace

    from bench_profile import kind_of, summarize
    from torch.autograd import DeviceType

    def kernel(name: str, start: float, end: float, stream: int = 7) -> SimpleNamespace:
        return SimpleNamespace(
            name=name,
            device_type=DeviceType.CUDA,
            device_resource_id=stream,
            time_range=SimpleNamespace(start=start, end=end),
        )

    events = [
        kernel("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT", 0, 4000),
        kernel("Memcpy HtoD (Pinned -> Device)", 3000, 5000, stream=20),  # overlaps the GEMM
        kernel("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128>>", 6000, 7000),
        SimpleNamespace(
            name="cudaHostAlloc",
            device_type=DeviceType.CPU,
            device_resource_id=0,
            time_range=SimpleNamespace(start=0, end=1500),
        ),
    ]
    text = summarize(events, wall_s=0.010, title="row_2048x4")
    assert "wall 10.0 ms   GPU busy 6.0 ms   idle 4.0 ms" in text
    assert "gemm 4.0" in text and "copy 2.0" in text and "attention 1.0" in text
    assert "7: 5.0" in text and "20: 2.0" in text  # per stream
    assert "cudaHostAlloc 1x 1.5" in text
    assert kind_of("void at::native::vectorized_elementwise_kernel<4, ...>") == "elementwise"
    assert kind_of("something_new") == "other"


def test_gap_report_splits_cpu_late_from_queued(tmp_path):
    """A synthetic trace: one gap where the CPU launched late (inside a slow Python function), one
    where the kernel was queued in time but waited for a host-to-device copy on another stream."""
    gaps = load_benchmark("bench_gaps.py")

    events = []

    def x(cat, name, ts, dur, tid=1, **args):  # noqa: ANN001, ANN202
        events.append(
            {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid, "pid": 0, "args": args}
        )

    x("kernel", "k1", 0, 100, tid=7, stream=7, correlation=1)
    x("cuda_runtime", "cudaLaunchKernel", 5, 5, correlation=1)
    x("python_function", "outer", 0, 300)
    x("python_function", "slow_py", 90, 60)
    x("cuda_runtime", "cudaLaunchKernel", 150, 5, correlation=2)
    x("kernel", "k2", 160, 40, tid=7, stream=7, correlation=2)
    x("cuda_runtime", "cudaLaunchKernel", 190, 5, correlation=3)  # queued before k2 ends
    x("gpu_memcpy", "Memcpy HtoD", 250, 150, tid=9, stream=9, correlation=4)
    x("kernel", "k3", 400, 50, tid=7, stream=7, correlation=3)
    x("cuda_runtime", "cudaStreamSynchronize", 460, 30)
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"traceEvents": events}))
    text = gaps.gap_report(trace)
    assert "cpu-late 0.1 ms, queued 0.2 ms" in text  # 55 us late (100 -> 155), 200 us queued
    late = text.split("innermost Python frame")[1]
    assert late.splitlines()[1].split() == ["0.05", "slow_py"]
    queued = text.split("queued gaps:")[1].splitlines()[1].split()
    assert queued[:2] == ["0.20", "1"] and "HtoD" in queued[-1]
    assert "1x" in text.split("synchronising runtime calls")[1]
