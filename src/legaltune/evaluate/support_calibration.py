"""Calibrating the support threshold on records whose cited article is in the corpus.

Positives: each record's answer against the article its ``citation`` names (the bundled answers
were written from those articles). Negatives: the same answer's claim against a random other
article of the same law (seeded), and against the BM25 nearest other article (a hard negative:
the article retrieval would most likely confuse it with). The threshold is the score that
maximises Youden's J averaged over both kinds of negative: true-positive rate − (false-positive
rate against random + against nearest articles) / 2.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from legaltune.corpus.model import Corpus
from legaltune.corpus.search import ArticleSearch
from legaltune.corpus.verify import Verifier
from legaltune.records.read import read_records


@dataclass
class Calibration:
    records: int  # records whose citation is in the corpus
    scored: int  # of those, answers that cite their record's article
    not_cited: list[str]  # ids of answers that do not cite their record's article
    positives: list[float]
    random_negatives: list[float]
    hard_negatives: list[float]
    threshold: float
    table: list[dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "scored": self.scored,
            "not_cited": self.not_cited,
            "auc_random": auc(self.positives, self.random_negatives),
            "auc_hard": auc(self.positives, self.hard_negatives),
            "threshold": self.threshold,
            "table": self.table,
        }


def auc(pos: list[float], neg: list[float]) -> float | None:
    """Probability that a positive scores above a negative (ties count half)."""
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _final_answer(rec: dict[str, Any], article: int) -> str | None:
    if isinstance(rec.get("answer"), str):
        return rec["answer"]
    turns = [m.get("content", "") for m in rec.get("messages", []) if m.get("role") == "assistant"]
    # a chat's record-level citation is its main provision: the first assistant turn that cites it
    return next((t for t in turns if f"Điều {article}" in t), None)


def calibrate(files: list[str], corpus: Corpus, *, seed: int = 0) -> Calibration:
    verifier = Verifier(corpus)
    # the hard negative is the nearest article by plain BM25 over title + text, the definition the
    # threshold of docs/corpus.md was calibrated with; retrieval's title field and thesaurus would change it
    search = ArticleSearch(corpus, title_weight=0, detect_law=False, expansion_weight=0)
    rng = random.Random(seed)
    pos, neg_random, neg_hard, not_cited = [], [], [], []
    records = 0
    for path in files:
        for loc, rec in read_records(path):
            cit = rec.get("citation") or {}
            law = corpus.laws.get(str(cit.get("number", "")))
            if law is None or str(cit.get("article")) not in law.articles:
                continue
            records += 1
            gold = law.articles[str(cit["article"])]
            answer = _final_answer(rec, cit["article"])
            checks = verifier.check(answer or "", f"{law.name} ({law.key})")
            check = next((c for c in checks if c.law == law.key and c.article == cit["article"]), None)
            if check is None or check.support is None:
                not_cited.append(str(rec.get("id", loc)))
                continue
            pos.append(check.support)
            others = [a for a in law.articles.values() if a.number != gold.number]
            neg_random.append(verifier.scorer.score(check.claim, rng.choice(others)) or 0.0)
            hard = next(h.article for h in search.search(check.claim, 2, law=law.key) if h.article != gold)
            neg_hard.append(verifier.scorer.score(check.claim, hard) or 0.0)
    table = []
    for step in range(20, 91, 5):
        t = step / 100
        table.append(
            {
                "threshold": t,
                "tpr": sum(p >= t for p in pos) / len(pos) if pos else 0.0,
                "fpr_random": sum(n >= t for n in neg_random) / len(neg_random) if neg_random else 0.0,
                "fpr_hard": sum(n >= t for n in neg_hard) / len(neg_hard) if neg_hard else 0.0,
            }
        )
    best = max(table, key=lambda r: (r["tpr"] - (r["fpr_random"] + r["fpr_hard"]) / 2, -r["threshold"]))
    return Calibration(
        records,
        len(pos),
        not_cited,
        pos,
        neg_random,
        neg_hard,
        best["threshold"],
        table,
    )
