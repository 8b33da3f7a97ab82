"""Generation-based evaluation during training: eval_gen_* scores in metrics.jsonl, TensorBoard and best-model choice."""

import json

import pytest

from legaltune.config.fields import ConfigError
from legaltune.config.gen_metrics import GEN_METRICS, greater_is_better
from legaltune.train.generation_eval import spread_subset
from tests.test_train import RECORDS, base_cfg, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_spread_subset_is_even_and_stable():
    assert spread_subset(list(range(10)), 3) == [0, 3, 6]
    assert spread_subset(list(range(3)), 8) == [0, 1, 2]


def test_metric_directions_and_config_checks(tmp_path):
    assert greater_is_better("eval_gen_citation_f1_article") and greater_is_better("gen_token_f1")
    assert not greater_is_better("eval_gen_hallucinated_rate") and not greater_is_better("eval_loss")
    with pytest.raises(ConfigError, match="not a metric legaltune computes"):
        base_cfg(tmp_path, training={"metric_for_best_model": "eval_accuracy"})
    with pytest.raises(ConfigError, match="gen_eval_examples is 0"):
        base_cfg(tmp_path, training={"metric_for_best_model": "gen_citation_f1"})
    with pytest.raises(ConfigError, match="eval_strategy is 'no'"):
        base_cfg(tmp_path, logging={"gen_eval_examples": 4})


def test_scores_are_logged_and_pick_the_best_checkpoint(tmp_path, tokenizer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS), encoding="utf-8")
    cfg = base_cfg(
        tmp_path,
        data={"eval_file": str(eval_file)},
        training={
            "max_steps": 3,
            "load_best_model_at_end": True,
            "metric_for_best_model": "gen_token_f1",
        },
        logging={
            "eval_strategy": "steps",
            "eval_steps": 1,
            "save_strategy": "steps",
            "save_steps": 1,
            "gen_eval_examples": 3,
            "gen_eval_max_new_tokens": 4,
            "gen_eval_batch_size": 2,
            "report_to": ["tensorboard"],
        },
    )
    res = train(cfg, tokenizer)
    rows = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in rows if "eval_gen_token_f1" in r]
    # steps 1, 2, 3 and the final evaluation after training
    assert [r["step"] for r in scored] == [1, 2, 3, 3]
    for r in scored:
        assert r["eval_gen_questions"] == 3
        assert {f"eval_{m}" for m in GEN_METRICS} <= set(r)
        assert 0.0 <= r["eval_gen_citation_f1_article"] <= 1.0
    tb = EventAccumulator(str(res.run_dir / "tensorboard"))
    tb.Reload()
    tags = tb.Tags()["scalars"]
    assert "eval/gen_token_f1" in tags and "eval/gen_hallucinated_rate" in tags
    last = max((res.run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((last / "trainer_state.json").read_text())
    # the Trainer compared checkpoints by the generation score (it raises when the metric is missing)
    assert state["best_metric"] == max(r["eval_gen_token_f1"] for r in scored[:3])
