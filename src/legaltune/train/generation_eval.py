"""Generation-based evaluation during training: a held-out subset answered at every evaluation.

At each evaluation (``on_evaluate``, which the Trainer calls after the loss pass and before it
picks the best checkpoint or checks early stopping) the model answers a fixed, evenly spread
subset of the held-out questions, batched and greedy with a capped length, and the answers are
scored as ``legaltune eval`` scores them: citation F1 (exact and article level), syllable F1,
ROUGE-L, and, against the law corpus, the hallucinated and supported citation rates. The scores
join the evaluation's metrics as ``eval_gen_*`` (so ``training.metric_for_best_model`` can name
them) and are logged, which puts them in metrics.jsonl and TensorBoard.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from legaltune.config.gen_metrics import GEN_METRICS
from legaltune.data.turns import prompt_text, split_turn
from legaltune.evaluate.score import score_answers


def spread_subset(records: list[Any], n: int) -> list[Any]:
    """``n`` records evenly spread over the list (all of them when it is shorter): every law of an
    eval file sorted by law gets its share, and the same records are used at every evaluation."""
    if n >= len(records):
        return list(records)
    return [records[i * len(records) // n] for i in range(n)]


class GenerationEvalCallback(TrainerCallback):
    """Answers held-out questions at each evaluation and adds ``eval_gen_*`` scores to its metrics."""

    def __init__(
        self,
        records: list[dict[str, Any]],
        *,
        chat_template: str | None,
        end_of_turn: str | None,
        max_new_tokens: int,
        batch_size: int,
        verifier: Any = None,
        log: Callable[[dict[str, float]], None] | None = None,
    ):
        turns = [split_turn(r["messages"]) for r in records]
        self.prompts = [t[0] for t in turns]
        self.refs = [t[2] for t in turns]
        self.gen = {
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "chat_template": chat_template,
            "end_of_turn": end_of_turn,
        }
        self.verifier = verifier
        self.log = log  # trainer.log: the scores reach metrics.jsonl and TensorBoard through on_log
        self.history: list[dict[str, float]] = []

    def scores(self, model: Any, tokenizer: Any) -> dict[str, float]:
        from legaltune.generate.answers import generate_answers

        t0 = time.perf_counter()
        answers = generate_answers(model, tokenizer, self.prompts, **self.gen)
        summary, _ = score_answers(
            answers, self.refs, verifier=self.verifier, contexts=[prompt_text(p) for p in self.prompts]
        )
        out: dict[str, float] = {}
        for name, (key, _) in GEN_METRICS.items():
            if key in summary:
                # None = nothing to score (no citation on either side, none checked): 0, so that the
                # best-checkpoint comparison always has a number
                out[f"eval_{name}"] = float(summary[key] or 0.0)
        check = summary.get("citation_check")
        if check is not None:
            out["eval_gen_citations_checked"] = float(check["checked"])
        out["eval_gen_questions"] = float(len(answers))
        out["eval_gen_seconds"] = round(time.perf_counter() - t0, 2)
        return out

    def on_evaluate(self, args, state, control, metrics=None, model=None, processing_class=None, **kw):
        if model is None or processing_class is None or not self.prompts:
            return
        scores = self.scores(model, processing_class)
        if metrics is not None:
            metrics.update(scores)  # read next by the Trainer's best-metric check and early stopping
        self.history.append({"step": state.global_step, **scores})
        if self.log is not None:
            self.log(scores)


def generation_eval_callback(
    cfg: Any, data: Any, log: Callable[[dict[str, float]], None]
) -> GenerationEvalCallback | None:
    """The callback for ``logging.gen_eval_examples`` held-out questions (None when 0 or no eval data)."""
    n = cfg.logging.gen_eval_examples
    if not n or not data.eval_records:
        return None
    from legaltune.corpus import build_corpus
    from legaltune.corpus.verify import Verifier

    return GenerationEvalCallback(
        spread_subset(data.eval_records, n),
        chat_template=data.formatter.template,
        end_of_turn=data.formatter.end_of_turn.strip(),
        max_new_tokens=cfg.logging.gen_eval_max_new_tokens,
        batch_size=cfg.logging.gen_eval_batch_size,
        verifier=Verifier(build_corpus(cfg.data.corpus_file)),
        log=log,
    )
