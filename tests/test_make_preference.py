"""`legaltune data make-preference`: rejected answers from the corpus or from an SFT run's mistakes."""

import json
import re
import subprocess
import sys

import pytest

from legaltune.records.read import DataError
from legaltune.train.make_preference import build_pairs, swap_articles

QA = [
    {
        "id": "a",
        "question": "Thời gian thử việc tối đa là bao lâu?",
        "answer": "Theo khoản 1 Điều 25 Bộ luật Lao động 2019, thời gian thử việc không quá 180 ngày. Điều 25 chỉ cho thử việc một lần.",
        "context": "Điều 25 quy định thời gian thử việc.",
        "citation": {"number": "45/2019/QH14", "article": 25},
    },
    {
        "id": "b",
        "question": "Đất nông nghiệp giao cho cá nhân bao lâu?",
        "answer": "Theo Điều 172 Luật Đất đai 2024, 50 năm.",
    },
    {"id": "c", "question": "Tuổi kết hôn?", "answer": "Nam từ đủ 20 tuổi, nữ từ đủ 18 tuổi."},
    {
        "messages": [
            {"role": "user", "content": "Người thành niên là ai?"},
            {"role": "assistant", "content": "Người từ đủ 18 tuổi theo Điều 20 Bộ luật Dân sự 2015."},
        ]
    },
]


def write(tmp_path, rows, name="qa.jsonl"):
    f = tmp_path / name
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return f


def numbers(text):
    return re.findall(r"Điều (\d+)", text)


def test_corpus_negatives_swap_only_the_article_numbers(tmp_path):
    from legaltune.corpus import build_corpus

    corpus = build_corpus()
    pairs, report = build_pairs(write(tmp_path, QA))
    assert report.records == 4 and report.pairs == 2
    assert report.skipped == {"no cited article of a law in the corpus": 1, "answer cites no article": 1}
    assert report.where["answer cites no article"] == [f"{tmp_path / 'qa.jsonl'}:3"]
    labor, civil = pairs
    assert labor["chosen"] == QA[0]["answer"] and labor["id"] == "a" and labor["context"] == QA[0]["context"]
    # every mention of Điều 25 becomes the same other article of the same law; the rest is untouched
    new = labor["negative"]["swapped"]["25"]
    assert numbers(labor["rejected"]) == [str(new), str(new)] and new != 25
    assert re.sub(r"Điều \d+", "Điều N", labor["rejected"]) == re.sub(r"Điều \d+", "Điều N", labor["chosen"])
    assert corpus.article("45/2019/QH14", new) is not None and labor["negative"]["law"] == "45/2019/QH14"
    # a chat record keeps its conversation as the prompt
    assert civil["prompt"] == QA[3]["messages"][:1] and numbers(civil["rejected"]) != ["20"]
    assert corpus.article("91/2015/QH13", civil["negative"]["swapped"]["20"]) is not None


def test_invented_negatives_cite_what_the_law_does_not_have(tmp_path):
    from legaltune.corpus import build_corpus
    from legaltune.corpus.verify import Verifier

    verifier = Verifier(build_corpus())
    bad = {"id": "d", "question": "?", "answer": "Theo khoản 99 Điều 25 Bộ luật Lao động 2019, không."}
    pairs, report = build_pairs(write(tmp_path, [*QA, bad]), negatives="invented")
    assert report.records == 5 and report.pairs == 2
    assert report.skipped["the answer itself cites what the law does not have"] == 1
    labor, civil = pairs
    # the clause becomes one past Điều 25's last; the article numbers and every other word stay
    assert re.sub(r"khoản \d+", "khoản N", labor["rejected"]) == re.sub(
        r"khoản \d+", "khoản N", labor["chosen"]
    )
    assert labor["rejected"] != labor["chosen"] and numbers(labor["rejected"]) == ["25", "25"]
    statuses = {c.status for c in verifier.check(labor["rejected"], labor["context"])}
    assert "no_clause" in statuses and labor["negative"]["kind"] == "invented"
    # cited without a clause: it gains one its article lacks, the article number stays
    assert [c.status for c in verifier.check(civil["rejected"], "")] == ["no_clause"]
    assert numbers(civil["rejected"]) == ["20"] and re.search(r"khoản \d+ Điều 20", civil["rejected"])
    assert all(not c.hallucinated for c in verifier.check(civil["chosen"], ""))


def test_random_pick_is_seeded(tmp_path):
    from legaltune.corpus import build_corpus
    from legaltune.corpus.verify import Verifier
    from legaltune.train.make_preference import CorpusNegatives, read_qa

    corpus = build_corpus()
    verifier = Verifier(corpus)
    item = read_qa(write(tmp_path, QA[:1]))[0]

    def pick(seed):
        return CorpusNegatives(corpus, pick="random", seed=seed, verifier=verifier).rejected(item)[0]

    assert pick(3) == pick(3)
    assert len({pick(s) for s in range(6)}) > 1


def test_swap_leaves_other_numbers_alone():
    text = "Theo khoản 2 Điều 5 và Điều 15, phạt 5 triệu."
    positions = [
        (text.index("khoản"), text.index(" và"), 5),
        (text.index("Điều 15"), text.index(", phạt"), 15),
    ]
    assert swap_articles(text, {5: 7}, positions) == "Theo khoản 2 Điều 7 và Điều 15, phạt 5 triệu."


def test_malformed_record_stops_with_file_line(tmp_path):
    f = write(tmp_path, [QA[0], {"question": "Q?", "answer": ""}])
    with pytest.raises(DataError, match=rf"{re.escape(str(f))}:2: field 'answer': empty"):
        build_pairs(f)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "legaltune.cli", "data", "make-preference", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_writes_pairs_and_counts(tmp_path):
    out = tmp_path / "out" / "pairs.jsonl"
    done = run_cli("--input", str(write(tmp_path, QA)), "--output", str(out), "--json")
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    assert counts["pairs"] == 2 and sum(counts["skipped"].values()) == 2
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows if "id" in r] == ["a"] and all(
        r["negative"]["kind"] == "corpus" for r in rows
    )


def test_cli_without_any_pair_writes_nothing(tmp_path):
    out = tmp_path / "pairs.jsonl"
    done = run_cli("--input", str(write(tmp_path, [QA[2]])), "--output", str(out))
    assert done.returncode == 2 and "no pair could be made" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_model_negatives_are_the_sft_runs_wrong_answers(tmp_path, tokenizer):
    """A real run directory on a tiny random Llama saved as a local model: its answers cite nothing
    right, so each becomes a rejected answer, generated as the run was trained."""
    from tests.test_after_sft_cli import local_tiny_model, sft_config

    model_dir = local_tiny_model(tmp_path, tokenizer)
    from legaltune.config.load import load_config
    from legaltune.train.trainer import run_training

    qa = write(tmp_path, QA)
    run = run_training(load_config(sft_config(tmp_path, model_dir, qa)), show_progress=False).run_dir
    pairs, report = build_pairs(qa, negatives="model", run_dir=run, max_new_tokens=8, batch_size=4)
    assert report.pairs + sum(report.skipped.values()) == 4
    assert report.pairs >= 3  # random weights do not cite Điều 25 / 172 / 20
    for p in pairs:
        assert p["negative"]["kind"] == "model" and p["rejected"] != p["chosen"]
        assert p["negative"]["citation_f1_article"] in (0.0, None)
    with pytest.raises(ValueError, match="needs --run"):
        build_pairs(qa, negatives="model")
