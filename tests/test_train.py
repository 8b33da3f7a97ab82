"""Training end to end on a tiny random Llama: run dir, GA normalisation, resume, rotation."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from legaltune.config.load import build_config
from legaltune.train.trainer import run_training
from tests.conftest import make_tiny_llama

RECORDS = [
    {
        "question": "Thời gian thử việc tối đa?",
        "answer": "Không quá 180 ngày (Điều 25 Bộ luật Lao động 2019).",
    },
    {"question": "Tuổi kết hôn của nữ?", "answer": "Từ đủ 18 tuổi."},
    {
        "question": "Người lao động nghỉ hằng năm bao nhiêu ngày khi làm việc bình thường?",
        "answer": "12 ngày làm việc (Điều 113).",
    },
    {
        "question": "Ai là người thành niên?",
        "answer": "Người từ đủ mười tám tuổi trở lên là người thành niên theo Điều 20 Bộ luật Dân sự 2015.",
    },
]


def base_cfg(tmp_path, **over):
    return build_config(base_raw(tmp_path, **over))


def base_raw(tmp_path, **over):
    """The tests' config as a plain dict (before validation)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    f = tmp_path / "train.jsonl"
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS), encoding="utf-8")
    raw = {
        "model": {"model_name": "unused-in-tests", "max_seq_length": 256, "device_map": "cpu"},
        "lora": {
            "r": 4,
            "lora_alpha": 8,
            "target_modules": ["q_proj", "v_proj", "down_proj"],
            "use_rslora": False,
            "use_gradient_checkpointing": False,
        },
        "training": {
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "max_steps": 4,
            "learning_rate": 1e-3,
            "warmup_steps": 0,
            "lr_scheduler_type": "constant",
        },
        "optimization": {"gradient_checkpointing": False},
        "data": {"train_file": str(f), "system_prompt": None, "dataloader_num_workers": 0},
        "logging": {
            "output_dir": str(tmp_path / "runs"),
            "run_name": "t",
            "save_strategy": "no",
            "eval_strategy": "no",
            "report_to": ["none"],
            "logging_steps": 1,
        },
    }
    for sec, kv in over.items():
        raw.setdefault(sec, {}).update(kv)
    return raw


def train(cfg, tokenizer, **kw):
    return run_training(
        cfg, model_and_tokenizer=(make_tiny_llama(len(tokenizer)), tokenizer), show_progress=False, **kw
    )


def adapter(run_dir):
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def test_run_directory_contents(tmp_path, tokenizer):
    cfg = base_cfg(tmp_path, logging={"report_to": ["tensorboard"]})
    res = train(cfg, tokenizer)
    run = res.run_dir
    for name in (
        "config.yaml",
        "data_stats.json",
        "metrics.jsonl",
        "train_summary.json",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/tokenizer.json",
    ):
        assert (run / name).exists(), name
    assert any((run / "tensorboard").iterdir())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in rows if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3, 4]
    for key in ("lr", "grad_norm", "tokens_per_s", "tokens", "trained_tokens", "peak_memory_gib", "epoch"):
        assert key in losses[-1], key
    assert 0 < losses[-1]["trained_tokens"] < losses[-1]["tokens"]
    # where the start-up went, phase by phase, in the order they ran
    startup = json.loads((run / "train_summary.json").read_text())["startup"]
    phases = startup["phases_s"]
    assert list(phases) == [
        "imports",
        "data_and_plan",
        "model_load",
        "lora_and_speed",
        "trainer_setup",
        "first_step",
    ]
    assert all(s >= 0 for s in phases.values()) and phases["imports"] > 0 and phases["first_step"] > 0
    wall = json.loads((run / "train_summary.json").read_text())["train"]["wall_s"]
    assert phases["first_step"] <= wall


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tokenizer):
    # One SGD step from the same init: the update is -lr × the gradient. Examples have
    # different numbers of trained tokens, so averaging per-micro-batch means would differ.
    common = {
        "optimization": {"optim": "sgd", "max_grad_norm": 0.0},
        "training": {"max_steps": 1, "learning_rate": 0.5, "weight_decay": 0.0},
    }
    one = base_cfg(
        tmp_path / "a",
        **{
            **common,
            "training": {
                **common["training"],
                "per_device_train_batch_size": 4,
                "gradient_accumulation_steps": 1,
            },
        },
    )
    acc = base_cfg(
        tmp_path / "b",
        **{
            **common,
            "training": {
                **common["training"],
                "per_device_train_batch_size": 1,
                "gradient_accumulation_steps": 4,
            },
        },
    )
    ra, rb = train(one, tokenizer), train(acc, tokenizer)
    trained = [sum(1 for x in r["labels"] if x != -100) for r in ra.data.train]
    assert len(set(trained)) > 1
    wa, wb = adapter(ra.run_dir), adapter(rb.run_dir)
    assert wa.keys() == wb.keys()
    moved = 0
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=1e-4)
        moved += int(wa[k].abs().sum() > 0 and "lora_B" in k)
    assert moved > 0


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            control.should_training_stop = True


class CtrlCAt(TrainerCallback):
    """Presses Ctrl-C (a real SIGINT to this process) as step ``step`` begins."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step + 1 == self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGINT)


def test_interrupted_and_resumed_run_ends_where_uninterrupted_one_does(tmp_path, tokenizer):
    over = {
        "training": {"max_steps": 6, "per_device_train_batch_size": 1},
        "logging": {"save_strategy": "steps", "save_steps": 2},
    }
    full = train(base_cfg(tmp_path / "full", **over), tokenizer)
    part_cfg = base_cfg(tmp_path / "part", **over)
    part = train(part_cfg, tokenizer, extra_callbacks=[CtrlCAt(3)])
    run = part.run_dir
    # Ctrl-C at step 3 saves checkpoint-3 (between the regular saves at 2 and 4) and stops there;
    # the adapter written is visibly partial, and the summary says so
    assert part.interrupted and (run / "checkpoints" / "checkpoint-3").is_dir()
    assert part.adapter_dir == run / "adapter-partial" and not (run / "adapter").exists()
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["status"] == "interrupted" and (summary["step"], summary["max_steps"]) == (3, 6)
    resumed = train(part_cfg, tokenizer, resume=str(part.run_dir))
    assert resumed.run_dir == part.run_dir
    assert (run / "adapter").is_dir() and not (run / "adapter-partial").exists()

    def last_loss(run):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [r for r in rows if "loss" in r][-1]

    assert last_loss(full.run_dir)["step"] == last_loss(resumed.run_dir)["step"] == 6
    assert last_loss(full.run_dir)["loss"] == pytest.approx(last_loss(resumed.run_dir)["loss"], rel=1e-5)
    for k, v in adapter(full.run_dir).items():
        torch.testing.assert_close(v, adapter(resumed.run_dir)[k], atol=1e-6, rtol=1e-5)
    # the log and the summary cover the whole run: each step once, the train loss over all 6 steps
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    whole = json.loads((full.run_dir / "train_summary.json").read_text())["train"]["train_loss"]
    assert resumed.train_metrics["train_loss"] == pytest.approx(whole, rel=1e-6)
    assert [r["train_loss"] for r in rows if "train_loss" in r] == [pytest.approx(whole, rel=1e-6)]


def test_save_total_limit_rotates_checkpoints(tmp_path, tokenizer):
    cfg = base_cfg(tmp_path, logging={"save_strategy": "steps", "save_steps": 1, "save_total_limit": 2})
    res = train(cfg, tokenizer)
    names = sorted(p.name for p in (res.run_dir / "checkpoints").glob("checkpoint-*"))
    assert names == ["checkpoint-3", "checkpoint-4"]


def test_eval_loss_logged_per_epoch_and_early_stopping_config(tmp_path, tokenizer):
    cfg = base_cfg(
        tmp_path,
        training={
            "max_steps": -1,
            "num_train_epochs": 2,
            "load_best_model_at_end": True,
            "early_stopping_patience": 1,
        },
        data={"val_split": 0.25},
        logging={"save_strategy": "epoch", "eval_strategy": "epoch"},
    )
    res = train(cfg, tokenizer, eval_before=True)
    rows = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for r in rows if "eval_loss" in r) >= 2
    assert res.eval_loss_before is not None and res.eval_loss_after is not None


def test_trainer_does_not_add_its_own_checkpointing(tmp_path):
    from legaltune.train.trainer import build_args

    args = build_args(base_cfg(tmp_path), tmp_path, use_cuda=False, dtype=torch.float32)
    assert args.gradient_checkpointing is False  # TRL's SFTConfig would default it to True


def test_ctrl_c_requests_checkpoint_and_stop():
    import os
    import signal

    from transformers import TrainerControl

    from legaltune.train.callbacks import InterruptCallback

    cb = InterruptCallback()
    cb.on_train_begin(None, None, None)
    try:
        os.kill(os.getpid(), signal.SIGINT)  # handled: no KeyboardInterrupt on the first press
        control = TrainerControl()
        cb.on_step_end(None, None, control)
        assert cb.requested and control.should_save and control.should_training_stop
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second press aborts
    finally:
        cb.on_train_end(None, None, None)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_embeddings_and_lm_head_can_be_trained(tmp_path, tokenizer):
    cfg = base_cfg(
        tmp_path, lora={"target_modules": ["q_proj", "embed_tokens", "lm_head"]}, training={"max_steps": 1}
    )
    res = train(cfg, tokenizer)
    keys = adapter(res.run_dir).keys()
    assert any("embed_tokens" in k for k in keys) and any("lm_head" in k for k in keys)


def test_group_by_length_only_without_packing(tmp_path):
    from legaltune.train.trainer import build_args

    def grouped(**data):
        args = build_args(base_cfg(tmp_path, data=data), tmp_path, use_cuda=False, dtype=torch.float32)
        return getattr(args, "train_sampling_strategy", None) == "group_by_length" or getattr(
            args, "group_by_length", False
        )

    assert grouped(group_by_length=True, packing=False)
    assert not grouped(group_by_length=True, packing=True)
    assert not grouped(group_by_length=False)


@pytest.mark.parametrize("budget_gb", [1.55, 1.64, 1.7])
def test_speed_auto_checkpoints_the_layers_the_plan_chooses(tmp_path, tokenizer, budget_gb):
    """speed.mode auto in `legaltune train`: the plan's layer count reaches the model and the run's summary.

    The budget is given (speed.gpu_memory_gb), so the policy runs on the CPU too. The architecture
    planned is the embedded model's (30 layers); the tiny test model has 2, of which the first
    min(N, 2) are checkpointed.
    """
    from legaltune.plan.core import make_plan

    cfg = base_cfg(
        tmp_path,
        model={"model_name": "smollm2-135m-instruct"},
        lora={"use_gradient_checkpointing": "unsloth"},
        optimization={"gradient_checkpointing": True},
        training={"max_steps": 1},
        speed={"mode": "auto", "gpu_memory_gb": budget_gb},
    )
    res = train(cfg, tokenizer)
    summary = json.loads((res.run_dir / "train_summary.json").read_text())
    speed, plan = summary["speed"], summary["plan"]
    # planned for the largest micro-batch the data makes, not the config's batch x max_seq_length
    rows, tokens = plan["micro_batch"]
    assert 0 < rows * tokens < cfg.training.per_device_train_batch_size * cfg.model.max_seq_length
    n = make_plan(cfg, train_examples=len(RECORDS), micro_batch=(rows, tokens)).checkpoint_layers
    assert plan["checkpoint_layers"] == n
    assert speed["mode"] == "auto" and speed["fused_lora"] == 2 * 3
    assert speed["checkpointing"] == ("none" if n == 0 else "offload 1/2" if n == 1 else "offload")
    assert any("speed auto:" in note for note in speed["notes"])
    worst = make_plan(cfg, train_examples=len(RECORDS)).checkpoint_layers
    assert n <= worst


def test_speed_auto_budgets_span_none_partial_and_all(tmp_path):
    from legaltune.plan.core import make_plan

    def layers(gb):
        cfg = base_cfg(
            tmp_path / str(gb),
            model={"model_name": "smollm2-135m-instruct"},
            lora={"use_gradient_checkpointing": "unsloth"},
            optimization={"gradient_checkpointing": True},
            speed={"mode": "auto", "gpu_memory_gb": gb},
        )
        return make_plan(cfg, train_examples=len(RECORDS)).checkpoint_layers

    # the three budgets above exercise many layers, exactly one, and none
    assert layers(1.55) >= 2 and layers(1.64) == 1 and layers(1.7) == 0


def test_speed_engine_runs_adamw_fused_on_cuda_only(tmp_path):
    from legaltune.plan.speed import optimizer_name

    cfg = base_cfg(tmp_path)
    assert cfg.optimization.optim == "adamw_torch"
    assert optimizer_name(cfg, use_cuda=True) == "adamw_torch_fused"
    assert optimizer_name(cfg, use_cuda=False) == "adamw_torch"
    assert optimizer_name(base_cfg(tmp_path / "off", speed={"mode": "off"}), use_cuda=True) == "adamw_torch"
    eight_bit = base_cfg(tmp_path / "8bit", optimization={"optim": "adamw_8bit"})
    assert optimizer_name(eight_bit, use_cuda=True) == "adamw_8bit"


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_kill_after_the_last_checkpoint_finishes_without_training_past_the_schedule(tmp_path, tokenizer):
    over = {
        "training": {"max_steps": 4, "per_device_train_batch_size": 1, "lr_scheduler_type": "cosine"},
        "logging": {"save_strategy": "steps", "save_steps": 1},
    }
    cfg = base_cfg(tmp_path, **over)
    full = train(cfg, tokenizer)
    run = full.run_dir
    want = adapter(run)
    # as a kill after checkpoint-4 but before the adapter and summary were written leaves it
    import shutil

    shutil.rmtree(run / "adapter")
    (run / "train_summary.json").unlink()
    resumed = train(cfg, tokenizer, resume=True)
    assert resumed.run_dir == run and not resumed.nothing_to_do
    summary = json.loads((run / "train_summary.json").read_text())
    assert (summary["status"], summary["step"], summary["max_steps"]) == ("finished", 4, 4)
    assert [r["step"] for r in _rows(run) if "loss" in r] == [1, 2, 3, 4]  # no step 5, nothing twice
    assert summary["train"]["train_loss"] == pytest.approx(full.train_metrics["train_loss"], rel=1e-9)
    got = adapter(run)
    assert all(torch.equal(want[k], got[k]) for k in want)
    # and now the run is finished: resuming it is nothing to do
    assert train(cfg, tokenizer, resume=True).nothing_to_do


def test_missing_optimizer_is_an_error_and_weights_only_continues_on_schedule(tmp_path, tokenizer):
    from legaltune.errors import UserError

    over = {
        "training": {"max_steps": 6, "per_device_train_batch_size": 1, "lr_scheduler_type": "cosine"},
        "logging": {"save_strategy": "steps", "save_steps": 3},
    }
    full = train(base_cfg(tmp_path / "full", **over), tokenizer)
    cfg = base_cfg(tmp_path / "part", **over)
    part = train(cfg, tokenizer, extra_callbacks=[CtrlCAt(3)])
    (part.run_dir / "checkpoints" / "checkpoint-3" / "optimizer.pt").unlink()
    with pytest.raises(UserError, match=r"checkpoint-3 is damaged: optimizer\.pt missing.*--weights-only"):
        train(cfg, tokenizer, resume=True)
    resumed = train(cfg, tokenizer, resume=True, weights_only=True)
    assert json.loads((resumed.run_dir / "train_summary.json").read_text())["step"] == 6
    # the fresh schedule was moved to step 3: the learning rates of steps 4-6 are the uninterrupted run's
    lrs = {r["step"]: r["lr"] for r in _rows(resumed.run_dir) if "lr" in r}
    full_lrs = {r["step"]: r["lr"] for r in _rows(full.run_dir) if "lr" in r}
    assert [lrs[s] for s in (4, 5, 6)] == pytest.approx([full_lrs[s] for s in (4, 5, 6)])
    # a fresh optimizer: not the uninterrupted run's weights
    a, b = adapter(full.run_dir), adapter(resumed.run_dir)
    assert any(not torch.equal(a[k], b[k]) for k in a)
