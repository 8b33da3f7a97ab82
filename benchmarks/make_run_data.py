"""A larger training set for real-run benchmarks: the bundled records' length spread, plus long contexts.

The bundled train split (334 records) makes seed 000's run 4 optimizer steps, seconds of steady
training. This writes ``--records`` legal QA records (default 3,000) drawn from it with a seed:
most keep their own context (so their lengths follow the bundled spread), and ``--long`` of them
(default 15 %; ids ending ``-long``) get a context of real law text from the corpus — the cited
article first (when the corpus has it), then the articles BM25 ranks nearest to the question —
grown to a token count drawn
uniformly from ``--long-tokens`` (default 2,000–8,000, counted with ``--tokenizer``'s tokenizer, the
one the run trains with). Questions and answers repeat: the set is for timing shapes and lengths,
not for quality.

    python3 benchmarks/make_run_data.py --tokenizer ~/.cache/legaltune/models/smollm2-135m-instruct \\
        --out /tmp/run_data.jsonl
    python3 benchmarks/real_run.py ... --data /tmp/run_data.jsonl

It prints the token-length percentiles of the contexts it wrote.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "data" / "vi_legal_qa" / "train.jsonl"


def long_context(question: str, cited: tuple[str, str] | None, target: int, search: Any, count: Any) -> str:
    """Real law text for ``question`` of about ``target`` tokens: the cited article first, then
    the nearest articles, whole, until the target is reached (the last one cut at a line break)."""
    from legaltune.data.context import article_context

    corpus = search.corpus
    first = corpus.article(*cited) if cited is not None else None
    articles = [first] if first is not None else []
    seen = {(a.law, a.number) for a in articles}
    articles += [
        h.article for h in search.search(question, 40) if (h.article.law, h.article.number) not in seen
    ]
    parts: list[str] = []
    used = 0
    for article in articles:
        text = article_context(article, corpus)
        tokens = count(text)
        if used + tokens > target:
            lines, kept = text.split("\n"), []
            for line in lines:
                if used + count("\n".join([*kept, line])) > target:
                    break
                kept.append(line)
            if kept:
                parts.append("\n".join(kept))
            break
        parts.append(text)
        used += tokens
    return "\n\n".join(parts)


def make_records(
    records: list[dict[str, Any]],
    n: int,
    *,
    long_share: float,
    long_tokens: tuple[int, int],
    count: Any,
    seed: int = 0,
) -> list[dict[str, Any]]:
    from legaltune.corpus.search import ArticleSearch
    from legaltune.corpus.sources import build_corpus
    from legaltune.data.context import record_citations

    rng = random.Random(seed)
    search = ArticleSearch(build_corpus()) if long_share > 0 else None
    with_question = [r for r in records if isinstance(r.get("question"), str)]  # chat records keep theirs
    out = []
    for i in range(n):
        long = search is not None and with_question and rng.random() < long_share
        rec = dict(rng.choice(with_question if long else records))
        rec["id"] = f"{rec.get('id', 'rec')}-x{i}" + ("-long" if long else "")
        if long:
            cited = next(iter(record_citations(rec)), None)
            rec["context"] = long_context(rec["question"], cited, rng.randint(*long_tokens), search, count)
        out.append(rec)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--source",
        default=str(BUNDLED),
        help="legal QA records to draw from (default: the bundled train split)",
    )
    p.add_argument("--records", type=int, default=3000)
    p.add_argument("--long", type=float, default=0.15, help="share of records given a long corpus context")
    p.add_argument("--long-tokens", default="2000-8000", help="token range of a long context, LOW-HIGH")
    p.add_argument(
        "--tokenizer", help="tokenizer directory to count tokens with (default: 3 characters a token)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    low, high = (int(x) for x in a.long_tokens.split("-"))
    if a.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(a.tokenizer)

        def count(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    else:

        def count(text: str) -> int:
            return len(text) // 3

    from legaltune.records.read import read_records

    records = make_records(
        [rec for _, rec in read_records(a.source)],
        a.records,
        long_share=a.long,
        long_tokens=(low, high),
        count=count,
        seed=a.seed,
    )
    Path(a.out).write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    lengths = sorted(count(r.get("context", "")) for r in records)
    pct = {q: lengths[min(len(lengths) - 1, int(q / 100 * len(lengths)))] for q in (50, 85, 90, 99)}
    longs = sum(r["id"].endswith("-long") for r in records)
    print(f"{len(records)} records -> {a.out}; {longs} with a long corpus context; context tokens p50/p85/p90/p99 "
          f"{pct[50]}/{pct[85]}/{pct[90]}/{pct[99]}, max {lengths[-1]}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
