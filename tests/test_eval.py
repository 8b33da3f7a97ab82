"""`legaltune eval` end to end on a tiny random Llama run (base dir + LoRA adapter + config.yaml).

``make_tiny_run`` is shared with tests/test_generate_chat.py and tests/test_report.py.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import make_tiny_llama, randomize_lora_b

EVAL_RECORDS = [
    {
        "id": "q1",
        "question": "Thời gian thử việc tối đa là bao lâu?",
        "answer": "Không quá 180 ngày theo khoản 1 Điều 25 Bộ luật Lao động 2019 (45/2019/QH14).",
    },
    {"id": "q2", "question": "Tuổi kết hôn của nữ?", "answer": "Từ đủ 18 tuổi (Điều 8)."},
    {
        "id": "chat1",
        "messages": [
            {"role": "user", "content": "Người lao động được nghỉ phép năm không?"},
            {"role": "assistant", "content": "Có, 12 ngày làm việc (Điều 113)."},
            {"role": "user", "content": "Còn người làm công việc nặng nhọc?"},
            {"role": "assistant", "content": "14 ngày làm việc theo điểm b khoản 1 Điều 113."},
        ],
    },
]
TRAIN_RECORDS = [{"question": "Ai là người thành niên?", "answer": "Người từ đủ 18 tuổi trở lên (Điều 20)."}]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def make_tiny_run(root: Path, tokenizer, *, nonzero: bool = True, system_prompt: str | None = None) -> Path:
    """root/base (random 2-layer Llama + tokenizer) and root/run (config.yaml, adapter/)."""
    from peft import LoraConfig, get_peft_model

    from legaltune.config.load import build_config, save_config

    root.mkdir(parents=True, exist_ok=True)
    base_dir = root / "base"
    model = make_tiny_llama(len(tokenizer))
    model.config.use_cache = True  # generation in tests: keep it at the tiny cost it should have
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    cfg = build_config(
        {
            "model": {
                "model_name": str(base_dir),
                "max_seq_length": 256,
                "device_map": "cpu",
                "attn_implementation": "sdpa",
            },
            "lora": {
                "r": 4,
                "lora_alpha": 8,
                "target_modules": ["q_proj", "v_proj"],
                "use_rslora": False,
                "use_gradient_checkpointing": False,
            },
            "optimization": {"gradient_checkpointing": False},
            "data": {
                "train_file": str(write_jsonl(root / "train.jsonl", TRAIN_RECORDS)),
                "eval_file": str(write_jsonl(root / "eval.jsonl", EVAL_RECORDS)),
                "system_prompt": system_prompt,
                "dataloader_num_workers": 0,
            },
            "logging": {"output_dir": str(root), "report_to": ["none"]},
        }
    )
    run = root / "run"
    save_config(cfg, run / "config.yaml")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    if nonzero:  # PEFT starts B at zero (a no-op adapter); a random B makes tuned differ from base
        randomize_lora_b(peft_model, 0.5, seed=1)
    peft_model.save_pretrained(run / "adapter")
    tokenizer.save_pretrained(run / "adapter")
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory, tokenizer) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("eval"), tokenizer)


def test_eval_end_to_end(run):
    from legaltune.evaluate.run_eval import evaluate_run

    result = evaluate_run(run, max_new_tokens=4, batch_size=3, show_progress=False)
    on_disk = json.loads((run / "eval.json").read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(result))
    assert not list(run.glob(".eval.json.*"))  # the temp file was renamed, not left behind
    for side in ("base", "tuned"):
        m = result[side]
        for key in (
            "exact_match",
            "token_f1",
            "rouge_l",
            "bleu",
            "citation_f1",
            "mean_syllables",
            "stopped_rate",
        ):
            assert key in m, (side, key)
        assert m["perplexity"] == pytest.approx(math.exp(m["loss"]), rel=1e-12)
        assert 0 < m["mean_new_tokens"] <= 4
    # A random non-zero adapter changes the model: different loss on the very same rows.
    assert abs(result["tuned"]["loss"] - result["base"]["loss"]) > 1e-3
    assert result["data"]["questions"] == 3 and result["data"]["multi_turn"] == 1
    assert result["corpus"]["articles"] == 2681 and result["corpus"]["support_threshold"] == 0.75
    for side in ("base", "tuned"):
        m = result[side]
        # the eval.json: exact and article-level citation P/R/F1, hallucinated and supported rates
        for key in (
            "citation_precision",
            "citation_recall",
            "citation_f1",
            "citation_precision_article_level",
            "citation_recall_article_level",
            "citation_f1_article_level",
            "hallucinated_rate",
            "hallucinated_article_rate",
            "supported_rate",
            "citation_check",
        ):
            assert key in m, (side, key)
        assert m["citation_check"]["answers"] == 3  # every answer went through the corpus check
    assert result["data"]["loss_tokens"] > 0
    chat = next(q for q in result["questions"] if q["id"] == "chat1")
    # multi-turn: the final turn is the one answered and scored
    assert chat["question"] == "Còn người làm công việc nặng nhọc?"
    assert chat["reference"] == "14 ngày làm việc theo điểm b khoản 1 Điều 113."
    for q in result["questions"]:
        assert isinstance(q["base"]["answer"], str) and isinstance(q["tuned"]["answer"], str)
        assert set(q["tuned"]) >= {
            "exact_match",
            "token_f1",
            "rouge_l",
            "citation_f1",
            "stopped",
            "new_tokens",
        }


def test_loss_is_token_weighted_and_batch_independent(run):
    from legaltune.data.prepare import prepare_data
    from legaltune.evaluate.run_eval import token_loss
    from legaltune.generate.load import load_run

    model, tokenizer, cfg = load_run(run)
    rows = prepare_data(cfg, tokenizer).eval
    one, n1 = token_loss(model, rows, batch_size=1, pad_token_id=tokenizer.pad_token_id)
    three, n3 = token_loss(model, rows, batch_size=3, pad_token_id=tokenizer.pad_token_id)
    # Padding a batch must not change the loss (a mean of per-batch means would).
    assert one == pytest.approx(three, rel=1e-5) and n1 == n3
    # Independent reference: transformers' per-row mean loss, weighted by each row's trained tokens.
    total = count = 0.0
    with torch.no_grad():
        for r in rows:
            n = sum(1 for x in r["labels"][1:] if x != -100)
            out = model(input_ids=torch.tensor([r["input_ids"]]), labels=torch.tensor([r["labels"]]))
            total, count = total + out.loss.item() * n, count + n
    assert n1 == count and one == pytest.approx(total / count, rel=1e-5)


def test_limit_and_data_file(run, tmp_path):
    from rich.console import Console

    from legaltune.evaluate.run_eval import evaluate_run
    from legaltune.evaluate.table import render_eval

    other = write_jsonl(tmp_path / "other.jsonl", list(reversed(EVAL_RECORDS)))
    result = evaluate_run(
        run, data_file=other, limit=1, max_new_tokens=2, show_progress=False, compute_loss=False
    )
    assert result["tuned"]["loss"] is None and result["data"]["loss_tokens"] == 0  # --no-loss
    assert result["data"]["questions"] == 1 and result["data"]["limit"] == 1
    assert result["data"]["available"] == 3 and result["data"]["source"] == str(other)
    assert [q["id"] for q in result["questions"]] == ["chat1"]  # the first record of --data
    buf = io.StringIO()
    render_eval(result, Console(file=buf, width=140))
    text = " ".join(buf.getvalue().split())  # the title wraps at the table's width, which the paths change
    assert "citation F1" in text and "first 1 of 3" in text and "Δ" in text
    assert "hallucinated citations (law in corpus)" in text and "citations supported by the article" in text
    assert "no loss pass (--no-loss)" in text


def test_zero_adapter_equals_base(tmp_path, tokenizer):
    from legaltune.evaluate.run_eval import evaluate_run

    run = make_tiny_run(tmp_path, tokenizer, nonzero=False)
    result = evaluate_run(run, max_new_tokens=3, limit=2, batch_size=2, show_progress=False)
    assert result["tuned"]["loss"] == pytest.approx(result["base"]["loss"], abs=1e-6)
    assert [q["tuned"]["answer"] for q in result["questions"]] == [
        q["base"]["answer"] for q in result["questions"]
    ]


def test_trained_run_loss_matches_the_trainer(tmp_path, tokenizer):
    """A run written by run_training, its base moved (--base-model): our loss is the trainer's eval loss."""
    from legaltune.evaluate.run_eval import evaluate_run
    from tests.test_train import base_cfg, train

    base_dir = tmp_path / "base"
    make_tiny_llama(len(tokenizer)).save_pretrained(base_dir)  # the weights train() starts from (seed 0)
    tokenizer.save_pretrained(base_dir)
    eval_file = write_jsonl(tmp_path / "eval.jsonl", EVAL_RECORDS)
    cfg = base_cfg(
        tmp_path,
        data={"eval_file": str(eval_file)},
        training={"max_steps": 2, "per_device_eval_batch_size": 8},
    )
    res = train(cfg, tokenizer)
    result = evaluate_run(
        res.run_dir, base_model=str(base_dir), max_new_tokens=1, compare_base=False, show_progress=False
    )
    # One eval batch holds every example, so the trainer's mean is token-weighted too.
    assert result["trainer_eval_loss"] == pytest.approx(res.eval_loss_after, rel=1e-9)
    assert result["tuned"]["loss"] == pytest.approx(res.eval_loss_after, rel=1e-4)


def test_progress_moves_per_answer_not_per_batch(tokenizer):
    """The bar advances when each answer of a batch ends, and counts every answer once."""
    from legaltune.generate.answers import _CountFinished, generate_answers

    calls: list[int] = []
    counter = _CountFinished([7], calls.append)
    steps = [[1, 7, 2, 3], [7, 7, 5, 3], [7, 7, 7, 4]]  # last token of each row, step by step
    for last in steps:
        counter(torch.tensor([[0, t] for t in last]), None)
    counter.finish(4)
    assert calls == [1, 1, 1, 1]  # row 1 at step 1, row 0 at step 2, row 2 at step 3, row 3 at the limit

    convs = [[{"role": "user", "content": q}] for q in ("Điều 1?", "Thuế là gì?", "Hợp đồng?", "Lao động?")]
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    tokenizer.padding_side = side
    model = make_tiny_llama(len(tokenizer), seed=0)
    torch.manual_seed(0)
    with torch.no_grad():  # large random weights: each question gets its own tokens (small ones say "\n")
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    out = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    firsts = out[:, enc["input_ids"].shape[1]].tolist()
    assert firsts[0] not in out[1:, enc["input_ids"].shape[1] :].flatten().tolist()
    # stop on the token the first answer starts with: that row ends at step 1, the others at the limit
    seen: list[int] = []
    answers = generate_answers(
        model,
        tokenizer,
        convs,
        max_new_tokens=6,
        batch_size=4,
        end_of_turn=tokenizer.convert_ids_to_tokens(firsts[0]),
        on_answer=seen.append,
    )
    assert seen == [1, 3], seen  # the bar moves inside the batch, when the first answer ends
    assert answers[0].stopped and answers[0].new_tokens == 0
