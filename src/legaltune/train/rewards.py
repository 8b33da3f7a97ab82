"""GRPO rewards for Vietnamese legal answers, checked against the reference and the law corpus.

Each reward is a TRL reward function (``completions`` plus the dataset's ``reference`` / ``context``
columns → one number per answer, or None where it does not apply, which TRL leaves out of the sum
and of the reward's logged mean). TRL logs each as ``rewards/<name>/mean`` and ``/std``:

* ``citation``: article-level citation F1 of the answer against the reference answer — the metric
  ``legaltune eval`` reports as citation_f1_article_level (None when the reference cites nothing);
* ``exists``: (existing − hallucinated) / checked citations, in [−1, 1], where *checked* are the
  answer's citations whose law is in the corpus and *hallucinated* those naming an article, clause or
  point the law does not have (None when nothing is checkable);
* ``supported``: share of the checked citations whose article text supports the answer (the corpus
  support score at its calibrated threshold; None when nothing is checkable);
* ``format``: 0.5 when the answer ends with the end-of-turn token (it stopped by itself within
  ``grpo.max_completion_length``) + 0.5 when it cites at least one article.

The corpus checks are :class:`legaltune.corpus.verify.Verifier`'s, the same as eval and generate use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from legaltune.config.schema import GrpoConfig
from legaltune.evaluate.citations import citation_scores
from legaltune.text.citations import article_mentions

# (name, GrpoConfig weight field)
REWARDS = (
    ("citation", "reward_citation"),
    ("exists", "reward_exists"),
    ("supported", "reward_supported"),
    ("format", "reward_format"),
)


def completion_text(completion: Any) -> str:
    """The answer of a TRL completion: a string, or conversational ``[{"role": "assistant", "content"}]``."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion if m.get("role", "assistant") == "assistant")


class LegalRewards:
    """The four rewards over one corpus verifier and the tokenizer's end-of-turn ids (module doc)."""

    def __init__(self, verifier: Any, stop_ids: Iterable[int]):
        self.verifier = verifier
        self.stop_ids = set(stop_ids)
        self._checks: dict[tuple[str, str], list[Any]] = {}

    def _checked(self, text: str, context: str) -> list[Any]:
        """The answer's checkable citations (exists and supported read the same checks: computed once)."""
        key = (text, context)
        if key not in self._checks:
            if len(self._checks) > 4096:
                self._checks.clear()
            self._checks[key] = [c for c in self.verifier.check(text, context) if c.checked]
        return self._checks[key]

    def citation(self, completions: list[Any], reference: list[str], **_: Any) -> list[float | None]:
        out: list[float | None] = []
        for completion, ref in zip(completions, reference, strict=True):
            scores = citation_scores(completion_text(completion), ref, level="article")
            out.append(None if scores["n_ref"] == 0 else float(scores["f1"] or 0.0))
        return out

    def exists(self, completions: list[Any], context: list[str], **_: Any) -> list[float | None]:
        out: list[float | None] = []
        for completion, ctx in zip(completions, context, strict=True):
            checks = self._checked(completion_text(completion), ctx)
            bad = sum(c.hallucinated for c in checks)
            out.append((len(checks) - 2 * bad) / len(checks) if checks else None)
        return out

    def supported(self, completions: list[Any], context: list[str], **_: Any) -> list[float | None]:
        out: list[float | None] = []
        for completion, ctx in zip(completions, context, strict=True):
            checks = self._checked(completion_text(completion), ctx)
            out.append(sum(c.supported for c in checks) / len(checks) if checks else None)
        return out

    def format(self, completions: list[Any], completion_ids: list[list[int]], **_: Any) -> list[float]:
        out = []
        for completion, ids in zip(completions, completion_ids, strict=True):
            stopped = bool(ids) and ids[-1] in self.stop_ids
            cites = bool(article_mentions(completion_text(completion))[1])
            out.append(0.5 * stopped + 0.5 * cites)
        return out

    def weighted(self, cfg: GrpoConfig) -> tuple[list[Callable[..., list[Any]]], list[float]]:
        """(reward functions, weights) for TRL, leaving out those weighted 0."""
        pairs = [(getattr(self, name), getattr(cfg, weight)) for name, weight in REWARDS]
        kept = [(f, w) for f, w in pairs if w > 0]
        return [f for f, _ in kept], [w for _, w in kept]
