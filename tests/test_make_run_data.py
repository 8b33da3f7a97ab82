"""benchmarks/make_run_data.py: a larger real-run training set with long corpus contexts (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]


def _module():
    return load_benchmark("make_run_data.py")


def _count(text: str) -> int:
    return len(text) // 3


def test_records_keep_the_bundled_ones_and_long_contexts_are_real_law_text_in_range(tmp_path):
    from legaltune.corpus.sources import build_corpus
    from legaltune.data.context import record_citations

    mrd = _module()
    from legaltune.records.read import read_records

    bundled = [rec for _, rec in read_records(mrd.BUNDLED)]
    by_id = {r["id"]: r for r in bundled}
    out = tmp_path / "run.jsonl"
    assert (
        mrd.main(["--records", "300", "--long", "0.2", "--long-tokens", "600-1500", "--out", str(out)]) == 0
    )
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 300 and len({r["id"] for r in records}) == 300
    longs = [r for r in records if r["id"].endswith("-long")]
    assert 30 <= len(longs) <= 90  # 20 % of 300, seeded
    corpus = build_corpus()
    for r in records:
        source = by_id[r["id"].rsplit("-x", 1)[0]]
        assert r["question" if "question" in r else "messages"] == source.get(
            "question", source.get("messages")
        )
        if r in longs:
            assert 0 < _count(r["context"]) <= 1500
            cited = next(iter(record_citations(r)), None)
            article = corpus.article(*cited) if cited else None
            if article is not None:  # the cited article's own text comes first
                assert r["context"].startswith(f"Điều {article.number} ")
        else:
            assert r.get("context") == source.get("context")
    # seeded: the same set again
    again = tmp_path / "again.jsonl"
    mrd.main(["--records", "300", "--long", "0.2", "--long-tokens", "600-1500", "--out", str(again)])
    assert again.read_text(encoding="utf-8") == out.read_text(encoding="utf-8")


def test_the_set_passes_legaltunes_data_check(tmp_path, capsys):
    from legaltune.cli import main

    mrd = _module()
    out = tmp_path / "run.jsonl"
    mrd.main(["--records", "120", "--long", "0.25", "--long-tokens", "2000-8000", "--out", str(out)])
    capsys.readouterr()
    rc = main(["data", "check", "--data", str(out), "--model", "smollm2-135m-instruct", "--json"])
    report = capsys.readouterr().out
    assert rc == 0, report
