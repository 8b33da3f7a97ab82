"""`legaltune train`: set up → train → save, on TRL's SFTTrainer.

Data is prepared by legaltune (formatting, masking, packing, counts) and handed to SFTTrainer
already tokenized, with our padding-free collator. Gradient accumulation is normalised by the
number of trained tokens across the whole accumulated batch: transformers counts the labels of
all micro-batches of an optimizer step (``num_items_in_batch``) and the model's loss divides the
summed token losses by that count; tests/test_train.py checks bs 4 × GA 1 == bs 1 × GA 4.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer
from trl import SFTConfig, SFTTrainer

from legaltune.config.gen_metrics import greater_is_better
from legaltune.config.schema import Config
from legaltune.data.pack import BatchCollator
from legaltune.data.prepare import PreparedData, prepare_data
from legaltune.distributed import sync
from legaltune.distributed.env import is_distributed, is_main, local_world_size, world_size
from legaltune.distributed.quiet import quiet_libraries
from legaltune.distributed.strategy import distributed_args, keep_lora_reduction_fp32
from legaltune.errors import UserError
from legaltune.model.tokenizer import load_tokenizer
from legaltune.plan.speed import RunSpeedPlan, optimizer_name, plan_run
from legaltune.run.atomic import write_json_atomic
from legaltune.run.checkpoint import AtomicCheckpoints
from legaltune.run.session import Session
from legaltune.speed.state import speed_report as speed_report_of
from legaltune.speed.varlen import disable_varlen_attention, enable_varlen_attention
from legaltune.train.callbacks import (
    FastForwardScheduler,
    InterruptCallback,
    MetricsCallback,
    peak_memory_gib,
)
from legaltune.train.compile_cache import use_compile_cache
from legaltune.train.data_order import EpochSeededOrder, ResumedEpochOrder
from legaltune.train.generation_eval import generation_eval_callback
from legaltune.train.split_forward import SplitForwards
from legaltune.train.startup import StartupClock


class _RunCounters:
    """Mixin: trained (labelled) tokens and peak memory for metrics.jsonl and checkpoints, over every
    rank of a distributed run.

    Each rank counts its own tokens; the ranks add them up at each log and each checkpoint (both are
    reached by every rank at the same step), and average the step losses not logged yet, which
    the Trainer keeps per rank and rank 0 alone would otherwise save as the whole run's.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._trained_tokens = torch.zeros((), dtype=torch.long)  # this rank, this session
        self._tokens_before = 0  # the whole run's count at the checkpoint resumed from
        self._tokens_all_ranks = 0
        self._peak_all_ranks = 0.0

    def training_step(self, model, inputs, num_items_in_batch=None):  # type: ignore[override]
        labels = inputs.get("labels")
        if labels is not None:
            # stays on device; read only when logging, so no extra CPU-GPU sync per step
            self._trained_tokens = self._trained_tokens.to(labels.device) + (labels != -100).sum()
        return super().training_step(model, inputs, num_items_in_batch)  # type: ignore[misc]

    def trained_tokens_seen(self) -> int:
        """The whole run's trained tokens (distributed: as of the last log or checkpoint)."""
        if is_distributed():
            return self._tokens_all_ranks
        return self._tokens_before + int(self._trained_tokens.item())

    def peak_memory_all_ranks(self) -> float:
        return self._peak_all_ranks if is_distributed() else peak_memory_gib()

    def set_trained_tokens(self, n: int) -> None:
        """Resume: the count of the steps before the checkpoint."""
        self._tokens_before = self._tokens_all_ranks = n
        self._trained_tokens = torch.zeros((), dtype=torch.long)

    def _sync_ranks(self, *, losses: bool) -> None:
        if not is_distributed():
            return
        self._tokens_all_ranks = self._tokens_before + sync.reduce_sum(int(self._trained_tokens.item()))
        self._peak_all_ranks = sync.reduce_max(peak_memory_gib())
        tr_loss = getattr(self, "_tr_loss", None)
        if losses and tr_loss is not None:
            tr_loss.copy_(torch.tensor(sync.reduce_sum_float(float(tr_loss.item())) / world_size()))

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        self._sync_ranks(losses=False)
        super().log(logs, *args, **kwargs)  # type: ignore[misc]

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        self._sync_ranks(losses=True)
        super()._save_checkpoint(model, trial)  # type: ignore[misc]

    def _finalize_training(self, *args: Any, **kwargs: Any) -> Any:
        self._sync_ranks(losses=True)  # the Trainer adds the unlogged losses of this rank alone
        return super()._finalize_training(*args, **kwargs)  # type: ignore[misc]


class LegalSFTTrainer(AtomicCheckpoints, EpochSeededOrder, _RunCounters, SplitForwards, SFTTrainer):
    """TRL's SFTTrainer (its fused LM head computes the loss without full logits)."""

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):  # type: ignore[override]
        # TRL writes checkpoints/README.md at every save, naming the base by its hub id; a base read
        # from a local directory would be "a fine-tuned version of [None]". The run's adapter/ carries
        # PEFT's card with the base's real path, so such a card is not written.
        base = getattr(self.model.config, "_name_or_path", "") or ""
        if base and not Path(base).is_dir():
            super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)


class LegalLMHeadTrainer(AtomicCheckpoints, EpochSeededOrder, _RunCounters, SplitForwards, Trainer):
    """For runs that put LoRA on lm_head: TRL's fused head reads lm_head.weight directly and so refuses
    an adapter there; transformers' Trainer computes the loss from the adapted head's logits, with the
    same token-count normalisation across accumulated micro-batches."""


def _supports(name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(SFTConfig)}


def build_args(
    cfg: Config,
    run_dir: Path,
    *,
    use_cuda: bool,
    dtype: torch.dtype,
    padding_free: bool = False,
    optim: str | None = None,
    distributed: dict[str, Any] | None = None,
) -> SFTConfig:
    """SFTConfig carrying every training, optimization, data-loading and logging parameter of the config."""
    t, o, d, lg = cfg.training, cfg.optimization, cfg.data, cfg.logging
    kwargs: dict[str, Any] = {
        "output_dir": str(run_dir / "checkpoints"),
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "per_device_eval_batch_size": t.per_device_eval_batch_size or t.per_device_train_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "num_train_epochs": t.num_train_epochs,
        "max_steps": t.max_steps,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler_type,
        "weight_decay": t.weight_decay,
        "optim": optim or optimizer_name(cfg, use_cuda=use_cuda),
        "max_grad_norm": o.max_grad_norm,
        "adam_beta1": o.adam_beta1,
        "adam_beta2": o.adam_beta2,
        "adam_epsilon": o.adam_epsilon,
        "seed": cfg.effective_seed,
        "data_seed": cfg.effective_seed,
        "dataloader_num_workers": d.dataloader_num_workers,
        "dataloader_pin_memory": d.dataloader_pin_memory and use_cuda,
        "logging_steps": lg.logging_steps,
        "save_strategy": lg.save_strategy,
        "eval_strategy": lg.eval_strategy,
        "save_total_limit": lg.save_total_limit,
        "load_best_model_at_end": t.load_best_model_at_end,
        "report_to": [r for r in lg.report_to if r not in ("none", "tensorboard")] or "none",
        # Activation checkpointing is applied by legaltune per model instance (incl. CPU offload); the
        # Trainer's own switch must stay off (TRL's SFTConfig defaults it to on).
        "gradient_checkpointing": False,
        "bf16": use_cuda and dtype == torch.bfloat16,
        "fp16": use_cuda and dtype == torch.float16,
        "use_cpu": not use_cuda,
        "remove_unused_columns": False,
        # tokens/s counts real tokens: padded batches through their attention mask; padding-free
        # rows and packed rows hold (next to) no padding, and have no mask to count by
        "include_num_input_tokens_seen": "all" if (padding_free or d.packing) else "non_padding",
        "dataset_kwargs": {"skip_prepare_dataset": True},
        "max_length": cfg.model.max_seq_length,
        "packing": False,  # packing is done in legaltune.data.pack, with per-example positions
        "disable_tqdm": True,  # our progress bar shows loss, lr, tokens/s and ETA
    }
    if d.group_by_length and not d.packing:
        # transformers ≥ 5.2x: a sampling strategy; older 5.x: a boolean flag. Lengths come from the "length" column.
        if _supports("train_sampling_strategy"):
            kwargs["train_sampling_strategy"] = "group_by_length"
        elif _supports("group_by_length"):
            kwargs["group_by_length"] = True
        kwargs["length_column_name"] = "length"
    if _supports("activation_checkpointing"):  # transformers ≥ 5.2x renamed it; the old name warns
        kwargs["activation_checkpointing"] = False
    if lg.save_steps:
        kwargs["save_steps"] = lg.save_steps
    if lg.eval_steps:
        kwargs["eval_steps"] = lg.eval_steps
    if t.load_best_model_at_end or t.early_stopping_patience:
        kwargs["metric_for_best_model"] = t.metric_for_best_model
        kwargs["greater_is_better"] = greater_is_better(t.metric_for_best_model)
    if t.lr_scheduler_type == "cosine_with_min_lr":
        kwargs["lr_scheduler_kwargs"] = {"min_lr_rate": t.min_lr_rate if t.min_lr_rate is not None else 0.1}
    # transformers ≥ 5.18 folds warmup_ratio into a fractional warmup_steps; older 5.x has both.
    if t.warmup_ratio is not None:
        if _supports("warmup_ratio"):
            kwargs["warmup_ratio"] = t.warmup_ratio
        else:
            kwargs["warmup_steps"] = t.warmup_ratio
    else:
        kwargs["warmup_steps"] = t.warmup_steps or 0
    kwargs.update(distributed or {})  # DDP / FSDP2 (legaltune.distributed.strategy)
    return SFTConfig(**kwargs)


class PlanError(UserError, ValueError):
    """The run's plan found problems that would waste the run (see :func:`run_training`)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"the plan of this run has errors; nothing was trained:\n{lines}\n"
            "Fix the config (legaltune plan CONFIG shows the whole plan), or pass --ignore-plan-errors to train anyway."
        )


def _wants_cuda(cfg: Config) -> bool:
    return torch.cuda.is_available() and cfg.model.device_map not in ("cpu",)


def _plan_speed(cfg: Config, lengths: list[int], model: Any | None) -> RunSpeedPlan:
    """The run's speed plan on this machine (GPU 0, or where a given model already is)."""
    from legaltune.model.load import resolve_attn
    from legaltune.speed.policy import host_memory_available

    if model is not None:
        first = next(model.parameters())
        on_cuda, device = first.is_cuda, first.device
        attn = getattr(model.config, "_attn_implementation", None) or "sdpa"
    else:
        on_cuda = _wants_cuda(cfg)
        device = torch.device("cuda", torch.cuda.current_device()) if on_cuda else None
        attn = resolve_attn(cfg.model.attn_implementation)
    gpu = torch.cuda.get_device_properties(device).total_memory if on_cuda else None
    if cfg.speed.gpu_memory_gb:
        gpu = cfg.speed.gpu_memory_gb * 2**30
    return plan_run(
        cfg,
        lengths,
        on_cuda=on_cuda,
        attn=attn,
        gpu_memory=gpu,
        host_memory=host_memory_available(),
        world_size=world_size(),
        local_ranks=local_world_size(),
    )


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path
    data: PreparedData | None
    train_metrics: dict[str, Any]
    eval_loss_before: float | None
    eval_loss_after: float | None
    interrupted: bool
    trainer_model: Any = None  # the trained PEFT model, still in memory
    tokenizer: Any = None
    nothing_to_do: bool = False  # --resume of a finished run


def _to_dataset(rows: list[dict[str, Any]]):
    from datasets import Dataset

    if not rows:
        return None
    return Dataset.from_list([{**r, "length": len(r["input_ids"])} for r in rows])


def run_training(
    cfg: Config,
    *,
    resume: str | bool | None = None,
    weights_only: bool = False,
    eval_before: bool = False,
    show_progress: bool = True,
    model_and_tokenizer: tuple[Any, Any] | None = None,
    extra_callbacks: list[Any] | None = None,
    allow_plan_errors: bool = False,
    notice: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train per ``cfg`` and write the run directory. ``model_and_tokenizer`` skips loading (tests).

    ``resume``: True (this config's run) or a run / checkpoint path; see legaltune.run.resume.
    The run's plan (:func:`legaltune.plan.speed.plan_run`) is made before any weight loads; an
    error lint or host memory that would not fit raises :class:`PlanError` then, unless
    ``allow_plan_errors`` (the CLI's ``--ignore-plan-errors``). ``notice`` receives what resume and
    the lock did (default: printed to stderr)."""
    from legaltune.run import rank_dir
    from legaltune.run import session as sessions
    from legaltune.train.methods import after_sft
    from legaltune.train.preflight import check_environment

    clock = StartupClock()
    say = notice or (lambda m: print(f"note: {m}", file=sys.stderr))
    if not is_main():
        say, show_progress = (lambda m: None), False  # rank 0 speaks for the run
        quiet_libraries()
    sessions.refuse_flags(resume, weights_only)
    check_environment(cfg)
    # dpo / orpo / grpo: what differs from SFT (None for sft); its init adapter's LoRA settings become
    # cfg.lora before a resumed run's config is compared with this one
    method = after_sft(cfg, say)
    given = model_and_tokenizer[0] if model_and_tokenizer else None
    sync.join(cfg, on_cuda=next(given.parameters()).is_cuda if given is not None else _wants_cuda(cfg))
    if resume:
        session = rank_dir.resume_session(cfg, resume, weights_only=weights_only, notice=say)
    else:
        session = None
        rank_dir.refuse_existing(cfg)
    if session is not None and session.finished:
        run = session.run
        return TrainResult(run.path, run.adapter, None, {}, None, None, False, nothing_to_do=True)
    try:
        # Tokenize and check the data before spending time on the weights: bad data fails in seconds.
        tokenizer = model_and_tokenizer[1] if model_and_tokenizer else load_tokenizer(cfg.model)
        # on every rank (deterministic, no files written), then compared
        data = prepare_data(cfg, tokenizer) if method is None else method.prepare(tokenizer)
        rank_dir.check_same_data(data.train, data.eval)
        lengths = [len(r["input_ids"]) for r in data.train] if method is None else method.plan_lengths(data)
        speed_plan = _plan_speed(cfg, lengths, given)
        if method is not None:
            speed_plan.notes.extend(method.plan_notes())
        if show_progress:
            print(speed_plan.summary(), *speed_plan.notes, sep="\n  ")
        if speed_plan.problems and not allow_plan_errors:
            raise PlanError(speed_plan.problems)
        clock.mark("data_and_plan")
        if session is None:
            session = rank_dir.new_session(cfg, data.stats.to_dict(), say)
        elif is_main():
            write_json_atomic(session.run.data_stats, data.stats.to_dict(), "data stats", allow_nan=True)
        return _train(
            cfg,
            session,
            tokenizer,
            data,
            given,
            speed_plan,
            weights_only=weights_only,
            eval_before=eval_before,
            show_progress=show_progress,
            extra_callbacks=extra_callbacks,
            method=method,
            clock=clock,
        )
    finally:
        if session is not None:
            session.close()


def _train(
    cfg: Config,
    session: Session,
    tokenizer: Any,
    data: PreparedData,
    given: Any,
    speed_plan: RunSpeedPlan,
    *,
    weights_only: bool,
    eval_before: bool,
    show_progress: bool,
    extra_callbacks: list[Any] | None,
    method: Any = None,
    clock: StartupClock,
) -> TrainResult:
    from transformers import EarlyStoppingCallback, PrinterCallback
    from transformers.integrations import TensorBoardCallback

    from legaltune.model.load import load_model
    from legaltune.model.lora import apply_lora
    from legaltune.run import session as sessions

    run, checkpoint = session.run, session.checkpoint
    run_dir = run.path
    hint = session.resume_hint(cfg)
    if speed_plan.on_cuda:
        use_compile_cache()

    # the tokenizer loaded above (and used for the data) serves the model too
    model = given if given is not None else load_model(cfg.model, cfg.quantization, tokenizer)[0]
    clock.mark("model_load")
    model.config.use_cache = False  # a KV cache disables packed-sequence detection in attention
    if method is not None:
        model = method.prepare_model(model)
    else:
        model = apply_lora(
            model,
            cfg.lora,
            gradient_checkpointing=cfg.optimization.gradient_checkpointing,
            max_seq_length=cfg.model.max_seq_length,
            speed=cfg.speed,
            checkpoint_layers=speed_plan.checkpoint_layers,
        )
    varlen = speed_plan.padding_free and method is None and enable_varlen_attention(model)
    host_table = _embeddings_to_host(model) if speed_plan.embeddings_on_host and method is None else None
    clock.mark("lora_and_speed")
    speed_report = speed_report_of(model)
    if speed_report is not None:
        if host_table:
            speed_report.notes.append(host_table)
        if speed_plan.choice:
            speed_report.notes.append(f"speed auto: {speed_plan.choice}")
        if speed_plan.padding_free:
            speed_report.notes.append(f"padding-free micro-batches: {speed_plan.padding_free_why}")
        if show_progress:
            print(speed_report.summary(), *speed_report.notes, sep="\n  ")
    use_cuda = next(model.parameters()).is_cuda
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    dist = distributed_args(cfg, model, world_size=world_size(), on_cuda=use_cuda)
    if show_progress and dist.strategy != "single":
        print(dist.summary(), *dist.notes, sep="\n  ")
    args = build_args(
        cfg,
        run_dir,
        use_cuda=use_cuda,
        dtype=dtype,
        padding_free=speed_plan.padding_free,
        optim=speed_plan.optimizer,
        distributed=dist.trainer_args,
    )
    eval_ds = _to_dataset(data.eval) if method is None else method.eval_dataset(data)
    if eval_ds is None and cfg.logging.eval_strategy != "no":
        args.eval_strategy = "no"
    lm_head_adapted = "lm_head" in cfg.lora.target_modules
    trainer_cls = LegalLMHeadTrainer if lm_head_adapted else LegalSFTTrainer
    if method is not None:
        trainer = method.make_trainer(model, args, tokenizer, data, eval_ds)
    else:
        trainer = trainer_cls(
            model=model,
            args=args,
            train_dataset=_to_dataset(data.train),
            eval_dataset=eval_ds,
            processing_class=tokenizer,
            data_collator=BatchCollator(
                pad_token_id=tokenizer.pad_token_id or 0,
                padding_free=speed_plan.padding_free,
                max_length=cfg.model.max_seq_length,
            ),
        )
    if method is None and trainer_cls is LegalSFTTrainer:
        from legaltune.speed.lm_head import fuse_speed_lm_head

        # over the fused head SFTTrainer just put on the model: two vocabulary GEMMs a step, not three
        # (CUDA), or only the labelled positions projected (CPU)
        if fuse_speed_lm_head(model) and show_progress and speed_report is not None:
            how = "gradient in forward" if speed_report.fused_head else "labelled positions only"
            print(f"  LM head: {how}")
    if dist.strategy == "fsdp":
        keep_lora_reduction_fp32(trainer)
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; our bar and metrics.jsonl replace it
    carried = checkpoint.state if checkpoint is not None else {}
    trainer.checkpoint_hint = hint
    if method is None:
        trainer.forward_tokens = speed_plan.forward_tokens
    trainer.resume_weights_only = weights_only
    trainer.carried_loss_sum = float(carried.get("loss_sum", 0.0))
    trainer.set_trained_tokens(int(carried.get("trained_tokens", 0)))
    main = is_main()  # rank 0 writes metrics.jsonl and TensorBoard; every rank trains and checkpoints
    metrics_cb = MetricsCallback(
        run.metrics, trainer, show_progress, float(carried.get("elapsed_s", 0.0)), disk_hint=hint, write=main
    )
    interrupt = InterruptCallback()
    # before early stopping: it reads the generation scores this adds to each evaluation's metrics
    gen_eval = generation_eval_callback(cfg, data, trainer.log)
    for cb in (
        metrics_cb,
        clock,
        interrupt,
        ResumedEpochOrder(),
        *([gen_eval] if gen_eval else []),
        *(extra_callbacks or []),
    ):
        trainer.add_callback(cb)
    if weights_only:
        trainer.add_callback(FastForwardScheduler())
    if "tensorboard" in cfg.logging.report_to and main:
        from torch.utils.tensorboard import SummaryWriter

        tensorboard = TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run.tensorboard)))
        # it closes its writer at the end of training and opens another for the final evaluate();
        # without this that one goes to a second stream under checkpoints/runs/
        tensorboard.logging_dir = str(run.tensorboard)
        trainer.add_callback(tensorboard)
    if cfg.training.early_stopping_patience:
        trainer.add_callback(
            EarlyStoppingCallback(early_stopping_patience=cfg.training.early_stopping_patience)
        )

    try:
        before = trainer.evaluate()["eval_loss"] if (eval_before and eval_ds is not None) else None
        t0 = time.perf_counter()
        if checkpoint is not None and checkpoint.training_done:
            # Killed after the last checkpoint but before the adapter: the weights are that checkpoint's;
            # training again would run past the schedule.
            train_metrics = _finish_from_checkpoint(trainer, checkpoint)
        else:
            try:
                out = trainer.train(resume_from_checkpoint=str(checkpoint.path) if checkpoint else None)
            finally:
                metrics_cb.close()
            train_metrics = dict(out.metrics, train_loss=trainer.whole_run_train_loss())
        train_metrics["wall_s"] = round(time.perf_counter() - t0, 2)
        after = trainer.evaluate()["eval_loss"] if eval_ds is not None else None
    finally:
        if varlen:  # generation afterwards (demo, chat on the returned model) runs the model's own attention
            disable_varlen_attention(model)

    interrupted = interrupt.requested
    adapter_dir = sessions.write_adapter(trainer, tokenizer, run, interrupted=interrupted, hint=hint)
    result = TrainResult(
        run_dir, adapter_dir, data, train_metrics, before, after, interrupted, trainer.model, tokenizer
    )
    if not main:
        return result
    summary = {
        "status": "interrupted" if interrupted else "finished",
        "step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "resumed_from_step": checkpoint.step if checkpoint is not None else None,
        "adapter": adapter_dir.name,
        "train": train_metrics,
        "eval_loss_before": before,
        "eval_loss_after": after,
        "interrupted": interrupted,
        "speed": speed_report.to_dict() if speed_report is not None else None,
        "plan": speed_plan.to_dict(),
        "startup": clock.to_dict(),
        **({"method": method.summary()} if method is not None else {}),
        "distributed": dist.to_dict(),
    }
    sessions.write_summary(run, summary, hint)
    if show_progress:
        print(clock.summary())
    from legaltune.report.html import write_report

    write_report(run_dir)  # loss curves, lr, tokens/s, memory; `legaltune eval` refreshes it
    return result


def _embeddings_to_host(model: Any) -> str:
    """speed.embeddings_on_host, as planned: what it did, for the speed report."""
    from legaltune.speed.host_embedding import embeddings_to_host, host_embedding_blocker

    why = host_embedding_blocker(model)
    if why is not None:
        return f"input embeddings kept on the device: {why}"
    moved = embeddings_to_host(model)
    how = getattr(model.get_input_embeddings(), "host_gather", "CPU")
    return f"input embeddings in pinned host memory ({moved / 2**30:.2f} GiB off the device, rows gathered by {how})"


def _finish_from_checkpoint(trainer: Any, checkpoint: Any) -> dict[str, Any]:
    """Load the final checkpoint's weights (or the best one's) and state; the whole-run metrics."""
    from transformers import TrainerState

    trainer.state = TrainerState.load_from_json(str(checkpoint.path / "trainer_state.json"))
    best = trainer.state.best_model_checkpoint
    source = (
        best if (trainer.args.load_best_model_at_end and best and Path(best).is_dir()) else checkpoint.path
    )
    trainer._load_from_checkpoint(str(source))  # the Trainer's own loader, as in a resumed train()
    steps = trainer.state.global_step
    loss_sum = checkpoint.state.get("loss_sum")
    return {"train_loss": loss_sum / steps if loss_sum is not None and steps else None, "global_step": steps}
