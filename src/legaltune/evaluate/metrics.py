"""Answer metrics for Vietnamese: exact match, syllable F1, ROUGE-L and corpus BLEU.

Vietnamese writes one syllable per space-separated token, so every metric here works on
syllables of the normalised answer (see :func:`normalize_answer`), never on subword tokens.
We do not use ``rouge_score``: its default tokenizer keeps only ``[a-z0-9]`` and so deletes
most Vietnamese letters ("điều" -> "i u"), which inflates scores between unrelated answers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from legaltune.text.syllables import normalize_answer, syllables


def exact_match(pred: str, ref: str) -> float:
    """1.0 when the normalised answers are identical, else 0.0."""
    return float(normalize_answer(pred) == normalize_answer(ref))


def _f_measure(matched: int, n_pred: int, n_ref: int) -> float:
    if n_pred == 0 or n_ref == 0:
        # Both empty means both say nothing: agreement. Only one empty: nothing in common.
        return float(n_pred == n_ref)
    if matched == 0:
        return 0.0
    precision, recall = matched / n_pred, matched / n_ref
    return 2 * precision * recall / (precision + recall)


def token_f1(pred: str, ref: str) -> float:
    """SQuAD-style F1 over the bags of syllables of the normalised answers.

    Each syllable matches at most as many times as it occurs on both sides. Both answers
    empty gives 1.0, exactly one empty gives 0.0.
    """
    pred_tokens = syllables(normalize_answer(pred))
    ref_tokens = syllables(normalize_answer(ref))
    matched = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    return _f_measure(matched, len(pred_tokens), len(ref_tokens))


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a  # keep the DP row as short as the shorter sequence
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1: longest common subsequence of syllables, F-measure with beta = 1.

    precision = LCS / len(pred), recall = LCS / len(ref); empty cases as in :func:`token_f1`.
    """
    pred_tokens = syllables(normalize_answer(pred))
    ref_tokens = syllables(normalize_answer(ref))
    return _f_measure(_lcs_length(pred_tokens, ref_tokens), len(pred_tokens), len(ref_tokens))


def bleu(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU (0-100) of ``preds`` against one reference each, computed by ``sacrebleu``.

    Both sides go through :func:`normalize_answer` and are scored with sacrebleu's
    ``tokenize="none"``: the n-grams are exactly our syllables, not sacrebleu's 13a tokens
    (which would split differently around "/" and "-" in legal numbers). Default smoothing
    ("exp") and n-grams up to 4, as in sacrebleu's standard signature otherwise.
    """
    if len(preds) != len(refs):
        raise ValueError(f"bleu needs one reference per prediction, got {len(preds)} and {len(refs)}")
    if not preds:
        raise ValueError("bleu needs at least one prediction")
    from sacrebleu.metrics import BLEU  # imported here: keeps `import legaltune...` cheap

    hypotheses = [normalize_answer(p) for p in preds]
    references = [normalize_answer(r) for r in refs]
    scorer = BLEU(tokenize="none", force=True)  # force: input is deliberately pre-tokenised
    return float(scorer.corpus_score(hypotheses, [references]).score)
