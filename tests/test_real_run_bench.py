"""benchmarks/real_run.py's row set-up (CPU): every legaltune row trains into its own run directory,
with the preset's values the rows share, so a warm-cache repeat never meets the first run's
directory (which `legaltune train` refuses to write into twice)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]


def _module():
    return load_benchmark("real_run.py", "real_run_bench")


def _run_name(sets: list[str]) -> str:
    return next(s.split("=", 1)[1] for s in sets if s.startswith("logging.run_name="))


def test_each_legaltune_row_has_its_own_run_and_peers_share_the_values():
    rr = _module()
    args = rr.parse_args(["--model-dir", "/m", "--presets", "h200", "--max-steps", "h200=4", "--work", "/w"])
    first, warm, peer = (
        rr.overrides(args, "h200", row) for row in ("legaltune", "legaltune-warm", "unsloth")
    )
    assert _run_name(first) == "h200-legaltune" and _run_name(warm) == "h200-legaltune-warm"
    assert [s for s in first if "run_name" not in s] == [s for s in warm if "run_name" not in s]
    assert "training.max_steps=4" in first and "training.warmup_steps=1" in first
    assert "model.model_name=/m" in peer and "logging.output_dir=/w/runs" in peer


def test_dpo_rows_share_the_adapter_and_pairs_and_load_as_a_dpo_config():
    from legaltune.config.load import load_config

    rr = _module()
    args = rr.parse_args(["--model-dir", "/m", "--presets", "dpo", "--data", "/p.jsonl", "--work", "/w"])
    assert args.init_adapter == "/w/adapter"
    mine, theirs = rr.overrides(args, "dpo", "legaltune"), rr.overrides(args, "dpo", "trl")
    assert [s for s in mine if "run_name" not in s] == [s for s in theirs if "run_name" not in s]
    cfg = load_config(str(REPO / rr.PRESETS["dpo"]), overrides=mine)
    assert cfg.training.method == "dpo" and cfg.training.init_adapter == "/w/adapter"
    assert cfg.data.train_file == "/p.jsonl" and cfg.data.eval_file is None
    assert cfg.training.learning_rate == 5e-6 and cfg.preference.sft_weight == 0.0  # 003's RL rate, plain DPO
