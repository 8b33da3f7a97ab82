"""DPO, ORPO and GRPO after SFT, end to end on a tiny random Llama: each trains from the SFT
adapter and writes a run directory; DPO's reference is the SFT adapter; resume; the speed engine."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from legaltune.train.trainer import run_training
from tests.conftest import make_tiny_llama
from tests.test_train import RECORDS, CtrlCAt, base_cfg, base_raw

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAIRS = [
    {
        "prompt": r["question"],
        "chosen": r["answer"],
        "rejected": r["answer"] + " Xem Điều 999 Bộ luật Lao động 2019.",
    }
    for r in RECORDS
]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tokenizer):
    """A finished SFT run whose adapter is far from a no-op (lora_B drawn from N(0, 0.5)), so that
    "the SFT model" and "the base" give clearly different log-probabilities."""
    tmp = tmp_path_factory.mktemp("sft")
    cfg = base_cfg(tmp, training={"max_steps": 1})
    res = run_training(
        cfg, model_and_tokenizer=(make_tiny_llama(len(tokenizer)), tokenizer), show_progress=False
    )
    path = res.run_dir / "adapter" / "adapter_model.safetensors"
    weights = load_file(str(path))
    gen = torch.Generator().manual_seed(0)
    for k, v in weights.items():
        if "lora_B" in k:
            weights[k] = torch.randn(v.shape, generator=gen) * 0.5
    save_file(weights, str(path))
    (tmp / "pairs.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in PAIRS))
    return res.run_dir


def method_cfg(tmp_path, sft_run, method, **over):
    """A config of ``method`` continuing ``sft_run`` (no learning rate unless given: the method's default)."""
    from legaltune.config.load import build_config

    data = sft_run.parent.parent / ("train.jsonl" if method == "grpo" else "pairs.jsonl")
    raw = base_raw(tmp_path, training={"method": method, "init_adapter": str(sft_run), "max_steps": 2})
    del raw["training"]["learning_rate"]
    raw["data"]["train_file"] = str(data)
    if method == "grpo":
        raw["grpo"] = {"num_generations": 2, "max_completion_length": 8}
    for sec, kv in over.items():
        raw.setdefault(sec, {}).update(kv)
    return build_config(raw)


def after(tmp_path, sft_run, method, tokenizer, extra_callbacks=None, resume=None, **over):
    return run_training(
        method_cfg(tmp_path, sft_run, method, **over),
        model_and_tokenizer=(make_tiny_llama(len(tokenizer)), tokenizer),
        show_progress=False,
        extra_callbacks=extra_callbacks,
        resume=resume,
    )


def rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def changed(run_dir, sft_run):
    before = load_file(str(sft_run / "adapter" / "adapter_model.safetensors"))
    now = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert set(now) == set(before)  # the SFT adapter's modules
    assert not (run_dir / "adapter" / "ref").exists()  # TRL's frozen reference copy is not saved
    return max((now[k] - before[k]).abs().max().item() for k in now)


def test_dpo_trains_the_sft_adapter_against_itself(tmp_path, sft_run, tokenizer):
    res = after(tmp_path, sft_run, "dpo", tokenizer, training={"learning_rate": 1e-3})
    first = rows(res.run_dir)[0]
    # the reference is the SFT adapter (frozen copy): at the first step policy == reference, so the
    # implicit rewards are 0 and the loss is ln 2. With the base as reference they would not be
    # (the adapter moves the log-probs by whole nats, see the assert below).
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert abs(first["logps/chosen"]) > 1.0
    assert first["trained_tokens"] > 0 and "rewards/accuracies" in first
    assert changed(res.run_dir, sft_run) > 0
    summary = json.loads((res.run_dir / "train_summary.json").read_text())
    assert summary["method"]["method"] == "dpo" and "frozen" in summary["method"]["reference"]
    stats = json.loads((res.run_dir / "data_stats.json").read_text())
    assert stats["pairs"]["train"]["pairs"] == len(PAIRS)
    for name in ("config.yaml", "report.html", "adapter/adapter_config.json", "adapter/tokenizer.json"):
        assert (res.run_dir / name).is_file(), name
    assert "rewards vs step" in (res.run_dir / "report.html").read_text(encoding="utf-8")


def test_dpo_reference_differs_from_the_base(sft_run, tokenizer):
    """The premise of the test above: the SFT adapter changes the log-probabilities a lot."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(make_tiny_llama(len(tokenizer)), str(sft_run / "adapter"))
    ids = torch.tensor([tokenizer("Thời gian thử việc tối đa là bao lâu?")["input_ids"]])
    with torch.no_grad():
        tuned = model(input_ids=ids).logits.log_softmax(-1)
        with model.disable_adapter():
            base = model(input_ids=ids).logits.log_softmax(-1)
    assert (tuned - base).abs().max() > 1.0


def test_default_learning_rate_is_seed_003s_rl_rate(tmp_path, sft_run, tokenizer):
    res = after(tmp_path, sft_run, "dpo", tokenizer, training={"max_steps": 1})
    import yaml

    saved = yaml.safe_load((res.run_dir / "config.yaml").read_text())
    assert saved["training"]["learning_rate"] == 5e-6 and saved["training"]["method"] == "dpo"
    assert rows(res.run_dir)[0]["lr"] == pytest.approx(5e-6)


def test_orpo_trains_and_logs_its_odds_ratio(tmp_path, sft_run, tokenizer):
    res = after(tmp_path, sft_run, "orpo", tokenizer, training={"learning_rate": 1e-3})
    first = rows(res.run_dir)[0]
    assert "log_odds_ratio" in first and "nll_loss" in first and first["trained_tokens"] > 0
    assert first["tokens"] > 0  # counted from the pairs' columns
    assert changed(res.run_dir, sft_run) > 0


def test_grpo_samples_scores_and_logs_every_reward(tmp_path, sft_run, tokenizer):
    res = after(tmp_path, sft_run, "grpo", tokenizer, grpo={"reward_supported": 0.0})
    first = rows(res.run_dir)[0]
    for name in ("citation", "exists", "format"):
        assert f"rewards/{name}/mean" in first, name
    assert "rewards/supported/mean" not in first  # weight 0: not computed
    assert first["completions/mean_length"] > 0 and first["trained_tokens"] > 0 and first["tokens"] > 0
    stats = json.loads((res.run_dir / "data_stats.json").read_text())
    assert stats["prompts"]["train"]["prompts"] == len(RECORDS)
    assert stats["prompts"]["train"]["references_without_citation"] == 1  # "Từ đủ 18 tuổi."
    assert (res.run_dir / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_interrupted_and_resumed_dpo_ends_where_uninterrupted_one_does(tmp_path, sft_run, tokenizer):
    over = {
        "training": {"max_steps": 4, "per_device_train_batch_size": 1, "learning_rate": 1e-3},
        "logging": {"save_strategy": "steps", "save_steps": 2},
    }
    full = after(tmp_path / "full", sft_run, "dpo", tokenizer, **over)
    part = after(tmp_path / "part", sft_run, "dpo", tokenizer, extra_callbacks=[CtrlCAt(3)], **over)
    # Ctrl-C at step 3: checkpoint-3 saved, the partial adapter written, the run not finished
    assert part.interrupted and (part.run_dir / "checkpoints" / "checkpoint-3").is_dir()
    resumed = after(tmp_path / "part", sft_run, "dpo", tokenizer, resume=str(part.run_dir), **over)
    last = [r for r in rows(resumed.run_dir) if "loss" in r][-1]
    want = [r for r in rows(full.run_dir) if "loss" in r][-1]
    assert last["step"] == want["step"] == 4
    assert last["loss"] == pytest.approx(want["loss"], rel=1e-5)
    a, b = (load_file(str(r.run_dir / "adapter" / "adapter_model.safetensors")) for r in (full, resumed))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_speed_engine_changes_nothing_in_a_dpo_step(tmp_path, sft_run, tokenizer):
    """Fused LoRA linears follow TRL's switch to the frozen reference adapter and back."""
    runs = {
        mode: after(
            tmp_path / mode,
            sft_run,
            "dpo",
            tokenizer,
            training={"max_steps": 2, "learning_rate": 1e-3},
            speed={"mode": mode},
        )
        for mode in ("off", "auto")
    }
    summary = json.loads((runs["auto"].run_dir / "train_summary.json").read_text())
    assert summary["speed"]["fused_lora"] > 0
    for a, b in zip(rows(runs["off"].run_dir), rows(runs["auto"].run_dir), strict=True):
        for key in ("loss", "rewards/margins", "logps/chosen", "logps/rejected"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    x, y = (load_file(str(r.run_dir / "adapter" / "adapter_model.safetensors")) for r in runs.values())
    for k in x:
        torch.testing.assert_close(x[k], y[k], atol=1e-5, rtol=1e-4)


def test_records_without_a_rejected_answer_are_counted_aloud(tmp_path, sft_run, tokenizer):
    """A DPO config copied from an SFT one keeps its QA eval file (and a mixed train file): the pairs
    the trainer cannot use are said, with their files and counts, not skipped in silence."""
    from legaltune.train.methods import after_sft

    qa = sft_run.parent.parent / "train.jsonl"
    mixed = tmp_path / "mixed.jsonl"
    pairs = (sft_run.parent.parent / "pairs.jsonl").read_text()
    mixed.write_text(pairs + qa.read_text().splitlines(keepends=True)[0])
    said: list[str] = []
    cfg = method_cfg(tmp_path, sft_run, "dpo", data={"train_file": str(mixed), "eval_file": str(qa)})
    data = after_sft(cfg, said.append).prepare(tokenizer)
    assert len(data.train) == len(PAIRS) and not data.eval
    train_note = next(m for m in said if m.startswith("data.train_file"))
    assert str(mixed) in train_note and "1 records have no 'rejected'" in train_note
    eval_note = next(m for m in said if m.startswith("data.eval_file"))
    assert f"{len(RECORDS)} records have no 'rejected'" in eval_note and "no pair to evaluate" in eval_note


def test_pairs_cut_or_dropped_at_max_seq_length_are_said(tmp_path, sft_run, tokenizer):
    from legaltune.train.methods import after_sft

    said: list[str] = []
    cfg = method_cfg(tmp_path, sft_run, "dpo", model={"max_seq_length": 60})
    data = after_sft(cfg, said.append).prepare(tokenizer)
    st = data.stats.train
    assert st.truncated and st.dropped_prompt_too_long  # the short limit cuts some pairs, drops others
    note = next(m for m in said if m.startswith("train pairs longer than model.max_seq_length 60"))
    assert f"{st.truncated} with their answers cut" in note
    assert f"{st.dropped_prompt_too_long} dropped because the prompt alone fills it" in note
    assert f"{len(data.train)} pairs kept" in note
