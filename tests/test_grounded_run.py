"""A run trained with context_fill: cited, on a tiny model: the demo's base-vs-tuned grounding table,
and `legaltune eval` scoring corpus-context questions apart."""

import io
import json

import pytest
from rich.console import Console

from tests.test_train import base_cfg, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HELD_OUT = [
    {
        "question": "Thời giờ làm việc bình thường một tuần tối đa bao nhiêu giờ?",
        "answer": "Theo khoản 1 Điều 105 Bộ luật Lao động 2019, không quá 48 giờ trong 01 tuần.",
        "citation": {"number": "45/2019/QH14", "article": 105, "clause": 1},
    },
    {
        "question": "Đất nông nghiệp giao cho cá nhân có thời hạn bao lâu?",
        "answer": "Theo Điều 172 Luật Đất đai 2024, 50 năm.",
        "citation": {"number": "31/2024/QH15", "article": 172},
    },
]


def _grounded_run(tmp_path, tokenizer):
    eval_file = tmp_path / "held_out.jsonl"
    eval_file.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in HELD_OUT), encoding="utf-8"
    )
    cfg = base_cfg(
        tmp_path,
        model={"max_seq_length": 1024},
        data={"eval_file": str(eval_file), "context_fill": "cited", "context_max_chars": 300},
        training={"max_steps": 2},
    )
    return cfg, train(cfg, tokenizer)


def test_demo_compares_base_and_tuned_grounding(tmp_path, tokenizer):
    from legaltune.demo import compare_grounding

    cfg, res = _grounded_run(tmp_path, tokenizer)
    # the held-out question whose article is in the corpus was asked with its real text
    assert res.data.eval_records[0]["messages"][0]["content"].startswith(
        "Căn cứ pháp lý tham khảo:\nĐiều 105 Bộ luật Lao động 2019 (45/2019/QH14)"
    )
    buf = io.StringIO()
    scores = compare_grounding(cfg, res, Console(file=buf, width=160))
    text = " ".join(buf.getvalue().split())
    for label in (
        "citation F1, article level",
        "hallucinated citations",
        "citations supported by the article",
    ):
        assert label in text
    for side in ("base", "tuned"):
        summary, per = scores[side]
        assert len(per) == 2 and summary["citation_check"]["answers"] == 2
    # the demo's goal, counted per question: the reference's article cited, the answer ended
    for side in ("base", "tuned"):
        per = scores[side][1]
        right = sum(1 for p in per if (p["citation_f1_article_level"] or 0) > 0)
        stopped = sum(p["stopped"] for p in per)
        assert f"{right} / 2" in text and f"{stopped} / 2" in text
    assert "questions whose answer cites a reference article" in text
    assert "answers ended at end-of-turn" in text
    # the tuned side leaves the adapter on afterwards (the base side ran inside disable_adapter())
    lora_layers = [m for m in res.trainer_model.modules() if hasattr(m, "lora_A")]
    assert lora_layers and not any(m.disable_adapters for m in lora_layers)


def test_eval_scores_corpus_context_questions_apart(tmp_path, tokenizer):
    from legaltune.evaluate.run_eval import evaluate_run
    from legaltune.evaluate.table import render_eval
    from tests.conftest import make_tiny_llama

    base_dir = tmp_path / "base"
    make_tiny_llama(len(tokenizer)).save_pretrained(base_dir)  # the weights train() starts from (seed 0)
    tokenizer.save_pretrained(base_dir)
    _, res = _grounded_run(tmp_path, tokenizer)
    result = evaluate_run(res.run_dir, base_model=str(base_dir), max_new_tokens=2, show_progress=False)
    assert [q.get("context_from_corpus", False) for q in result["questions"]] == [True, False]
    for side in ("base", "tuned"):
        by = result[side]["by_context"]
        assert by["corpus"]["questions"] == 1 and by["own"]["questions"] == 1
        assert set(by["corpus"]) >= {"citation_f1_article_level", "hallucinated_rate", "supported_rate"}
    buf = io.StringIO()
    render_eval(result, Console(file=buf, width=200))
    assert "1 questions asked with law text from the corpus (base → tuned): article F1" in buf.getvalue()
