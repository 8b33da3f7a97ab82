"""The generation scores training can log and select checkpoints by (``eval_gen_*``): the names
``training.metric_for_best_model`` may take, and which way each is better."""

from __future__ import annotations

# name (without "eval_") → (key of legaltune.evaluate.score.score_answers' summary, +1 higher is better, -1 lower)
GEN_METRICS: dict[str, tuple[str, int]] = {
    "gen_citation_f1": ("citation_f1", 1),
    "gen_citation_f1_article": ("citation_f1_article_level", 1),
    "gen_token_f1": ("token_f1", 1),
    "gen_rouge_l": ("rouge_l", 1),
    "gen_hallucinated_rate": ("hallucinated_rate", -1),
    "gen_supported_rate": ("supported_rate", 1),
    "gen_stopped_rate": ("stopped_rate", 1),
}


def greater_is_better(metric: str) -> bool:
    """Direction of ``training.metric_for_best_model`` (eval_loss and the hallucinated rate: lower)."""
    name = metric.removeprefix("eval_")
    return name in GEN_METRICS and GEN_METRICS[name][1] > 0
