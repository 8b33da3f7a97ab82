"""`make demo`'s config trains on whole answers, and the demo says how many examples were cut."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from legaltune.config.load import load_config

DEMO = Path(__file__).parent.parent / "configs" / "demo.yaml"


def test_demo_config_keeps_every_answer_whole(tokenizer, monkeypatch):
    """With the demo's settings no bundled example is truncated: each is trained whole (its
    end-of-turn token too, so the model can learn to stop) or, when longer than max_seq_length,
    left out and counted, exactly the examples that are longer. Checked with SmolLM2's tokenizer (the
    one the tests fetch): it makes the same text ~2.4x more tokens than the demo's Gemma 3 270M, so
    what fits it fits Gemma's too."""
    from legaltune.data.prepare import prepare_data

    monkeypatch.chdir(DEMO.parent.parent)
    every = ["data.max_train_examples=null", "data.max_eval_examples=null"]  # any seed's sample
    cfg = load_config(DEMO, every)
    stats = prepare_data(cfg, tokenizer).stats
    uncut = prepare_data(load_config(DEMO, [*every, "model.max_seq_length=8192"]), tokenizer).stats
    for split, full in ((stats.train, uncut.train), (stats.eval, uncut.eval)):
        assert split.records > 0 and (split.truncated, split.answers_lost_tokens) == (0, 0)
        assert split.examples + split.dropped_overlength == full.examples
        assert split.dropped_overlength <= 0.05 * full.examples  # a few long-context records, not the data
    assert max(stats.train.length_percentiles["max"], stats.eval.length_percentiles["max"]) <= (
        cfg.model.max_seq_length
    )


@pytest.mark.slow
def test_demo_summary_counts_truncation(tmp_path, monkeypatch):
    """A real (one-step) demo run: the summary prints the truncation counts, here of a run made to cut."""
    from legaltune.demo import run_demo

    monkeypatch.chdir(DEMO.parent.parent)
    cfg = load_config(
        DEMO,
        [
            "model.model_name=smollm2-135m-instruct",  # the model `make test` fetches; the demo's Gemma needs PyPI
            f"logging.output_dir={tmp_path}",
            "logging.report_to=[none]",
            "training.max_steps=1",
            "training.warmup_steps=0",  # one step cannot warm up (plan stops such a run)
            "data.max_train_examples=2",
            "data.max_eval_examples=1",
            "model.max_seq_length=320",
            "data.overlength=truncate",
            "data.context_fill=none",  # short examples: 320 tokens cut answers but leave some of each
            "data.use_context=false",
        ],
    )
    out = io.StringIO()
    run_demo(cfg, Console(file=out, width=300), max_new_tokens=4)
    text = out.getvalue()
    stats = json.loads(next(tmp_path.glob("*/data_stats.json")).read_text(encoding="utf-8"))
    train = stats["train"]
    assert train["truncated"] >= 1  # the run was made to cut
    assert (
        f"training examples longer than max_seq_length 320: {train['truncated']} truncated "
        f"({train['answers_lost_tokens']} answers lost {train['lost_trained_tokens']} tokens), 0 dropped"
    ) in text
    assert f"eval examples longer than max_seq_length 320: {stats['eval']['truncated']} truncated" in text
