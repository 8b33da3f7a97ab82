"""The benchmark's FP8 rows (legaltune-fast+fp8, legaltune-lean+fp8, unsloth+fp8) on the CPU: row
selection, the plan they are compared with, and one training step of each legaltune FP8 row."""

from __future__ import annotations

import time

import pytest
import torch

from legaltune.speed.fp8_linear import fp8_linear_count
from tests.test_benchmark_harness import load_harness


@pytest.fixture(scope="module")
def harness():
    return load_harness()


def test_fp8_rows_are_in_the_default_set_without_4bit_variants(harness):
    rows = harness.expand_variants(None, qlora=True)
    assert {"legaltune-fast+fp8", "legaltune-lean+fp8", "unsloth+fp8"} <= set(rows)
    assert not any("fp8+qlora" in r for r in rows)
    assert harness.expand_variants("legaltune-fast,legaltune-fast+fp8", qlora=True) == [
        "legaltune-fast",
        "legaltune-fast+fp8",
        "legaltune-fast+qlora",
    ]
    with pytest.raises(SystemExit, match="no 4-bit variant"):
        harness.expand_variants("legaltune-lean+fp8+qlora", qlora=False)


def test_fp8_rows_are_compared_with_the_fp8_plan(harness):
    arch = harness.plan_arch("llama-3.1-8b", None)
    bf16 = harness.plan_fields(arch, "legaltune-fast", 2048, 4, None, 2)
    fp8 = harness.plan_fields(arch, "legaltune-fast+fp8", 2048, 4, None, 2)
    assert any("FP8" in k for k in fp8["plan_components_gib"]) and fp8["plan_applies"]
    assert 6.0 < bf16["plan_peak_gib"] - fp8["plan_peak_gib"] < 6.5
    lean = harness.plan_fields(arch, "legaltune-lean+fp8", 2048, 4, None, 2)
    assert lean["plan_checkpointing"] == "unsloth" and lean["plan_peak_gib"] < fp8["plan_peak_gib"]
    # the input embedding table in host memory: 1.0 GiB less (#23's lean goal is <= 10 GiB)
    host = harness.plan_fields(arch, "legaltune-lean+fp8+host", 2048, 4, None, 2)
    assert lean["plan_peak_gib"] - host["plan_peak_gib"] == pytest.approx(128256 * 4096 * 2 / 2**30, abs=0.01)


def test_fp8_row_builds_and_trains_one_step(harness):
    row = "legaltune-lean+fp8"  # (legaltune-fast+fp8 differs only in checkpointing)
    ctx = harness.Ctx(
        variant=row,
        qlora=False,
        arch="smollm2-135m",
        layers=2,
        max_seq=32,
        device="cpu",
        dtype="float32",
        model_dir=None,
        deadline=time.time() + 60,
    )
    model = harness.ROWS[row].setup(ctx)
    assert fp8_linear_count(model) == 2 * 7
    ids = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    loss = model(input_ids=ids, labels=ids, fused_lm_head=True).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert torch.isfinite(loss) and grads and all(g is not None and g.abs().sum() > 0 for g in grads)
