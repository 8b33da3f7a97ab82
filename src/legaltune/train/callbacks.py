"""Trainer callbacks: progress bar, metrics.jsonl, and a clean Ctrl-C."""

from __future__ import annotations

import json
import resource
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from legaltune.distributed.sync import any_rank
from legaltune.run.atomic import disk_errors
from legaltune.speed.offload import pinned_arena_stats


def peak_memory_gib() -> float:
    """Peak GPU memory allocated (CUDA) or the process's peak resident memory (CPU)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    # ru_maxrss is KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _pinned_arena(trainer: Any) -> tuple[int, int, float] | None:
    model = getattr(trainer, "model", None)
    if model is None:
        return None
    try:
        return pinned_arena_stats(model)
    except ValueError:  # no decoder layers to look in (a model legaltune's speed-ups never touch)
        return None


# TRL's DPO (rewards/chosen, rewards/margins, rewards/accuracies, logps/…, logits/…), ORPO (also
# log_odds_ratio, nll_loss) and GRPO (rewards/<function>/mean|std, reward, reward_std, kl,
# completions/…, clip_ratio/…) metrics, and their eval_ forms
METHOD_METRICS = (
    "rewards/",
    "reward",
    "logps/",
    "logits/",
    "log_odds",
    "nll_loss",
    "kl",
    "completions/",
    "clip_ratio",
    "frac_reward_zero_std",
)


class MetricsCallback(TrainerCallback):
    """Appends one JSON line per log event to RUN/metrics.jsonl and drives the progress bar.

    The bar shows loss, learning rate and tokens/s; tqdm adds the ETA. ``trained_tokens`` (tokens
    with a label) comes from the trainer's counter, ``tokens`` from transformers' input-token count,
    both over every rank of a distributed run; ``peak_memory_gib`` is the largest of any rank.
    ``write`` false (ranks other than 0): nothing is written or shown.
    """

    def __init__(
        self,
        path: Path,
        trainer_ref: Any = None,
        show_progress: bool = True,
        elapsed_offset: float = 0.0,
        disk_hint: str = "",
        write: bool = True,
    ):
        self.path = path
        self.write = write
        self.trainer_ref = trainer_ref
        self.show_progress = show_progress
        self.elapsed_offset = elapsed_offset  # training time of the sessions before a resume
        self.disk_hint = disk_hint
        self.bar: tqdm | None = None
        self._t0 = self._last_time = time.perf_counter()
        self._last_tokens = 0

    def elapsed_s(self) -> float:
        return round(self.elapsed_offset + time.perf_counter() - self._t0, 2)

    def checkpoint_state(self) -> dict[str, Any]:
        return {"elapsed_s": self.elapsed_s()}  # saved in each checkpoint, restored on resume

    def on_train_begin(self, args, state, control, **kw):
        self._t0 = self._last_time = time.perf_counter()
        self._last_tokens = int(state.num_input_tokens_seen or 0)
        if not self.write:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.show_progress:
            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                desc="training",
                unit="step",
                dynamic_ncols=True,
            )

    def on_step_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kw):
        if not self.write:
            return
        logs = dict(logs or {})
        now = time.perf_counter()
        tokens = int(state.num_input_tokens_seen or 0)
        row: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        for key in ("loss", "eval_loss", "learning_rate", "grad_norm", "train_loss"):
            if key in logs:
                row["lr" if key == "learning_rate" else key] = logs[key]
        row.update({k: v for k, v in logs.items() if k.startswith("eval_gen_")})  # generation scores
        # what DPO / ORPO / GRPO log beside the loss (rewards, margins, log-probs, KL, answer lengths)
        row.update(
            {
                k: v
                for k, v in logs.items()
                if k.removeprefix("eval_").startswith(METHOD_METRICS) and k not in row
            }
        )
        if "loss" in logs:
            dt = now - self._last_time
            row["tokens_per_s"] = round((tokens - self._last_tokens) / dt, 1) if dt > 0 else None
            self._last_time, self._last_tokens = now, tokens
        row["tokens"] = tokens
        trainer = self.trainer_ref
        if trainer is not None and hasattr(trainer, "trained_tokens_seen"):
            row["trained_tokens"] = trainer.trained_tokens_seen()
        peak = getattr(trainer, "peak_memory_all_ranks", None)
        row["peak_memory_gib"] = round(peak() if peak is not None else peak_memory_gib(), 3)
        arena = _pinned_arena(trainer)
        if arena is not None:  # the offloader's page-locked host memory (what the host must hold)
            row["pinned_host_gib"] = round(arena[0] / 2**30, 3)
            row["pinned_used_peak_gib"] = round(arena[1] / 2**30, 3)  # the rest: blocks' unused tails
            row["pinned_register_s"] = round(arena[2], 2)
        row["elapsed_s"] = round(self.elapsed_offset + now - self._t0, 2)
        row["time"] = round(time.time(), 3)  # wall clock, to line runs up with other logs
        with (
            disk_errors(self.path, "metrics log", self.disk_hint),
            self.path.open("a", encoding="utf-8") as fh,
        ):
            fh.write(json.dumps(row) + "\n")
        if self.bar is not None:
            post = {}
            if "loss" in row:
                post["loss"] = f"{row['loss']:.4f}"
            if "lr" in row:
                post["lr"] = f"{row['lr']:.2e}"
            if row.get("tokens_per_s"):
                post["tok/s"] = f"{row['tokens_per_s']:.0f}"
            if "eval_loss" in row:
                post["eval_loss"] = f"{row['eval_loss']:.4f}"
            if post:
                self.bar.set_postfix(post)

    def on_train_end(self, args, state, control, **kw):
        self.close()

    def close(self) -> None:
        """Close the progress bar (also when training stops on an error, before the error is printed)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class InterruptCallback(TrainerCallback):
    """First Ctrl-C: finish the current step, save a checkpoint, stop. Second Ctrl-C: stop now."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def on_train_begin(self, args, state, control, **kw):
        self._previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            print("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to abort)", file=sys.stderr)

        try:
            signal.signal(signal.SIGINT, handler)
        except ValueError:  # not in the main thread: leave Ctrl-C alone
            self._previous = None

    def checkpoint_state(self) -> dict[str, Any]:
        return {"interrupted": self.requested}  # a stop asked by Ctrl-C is not the end of the schedule

    def on_step_end(self, args, state, control, **kw):
        # every rank stops after the same step: a Ctrl-C may reach the ranks between two different steps
        self.requested = any_rank(self.requested)
        if self.requested:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kw):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class FastForwardScheduler(TrainerCallback):
    """--weights-only: the fresh learning-rate schedule is stepped to where the checkpoint left it."""

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kw):
        if lr_scheduler is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": intended here
            for _ in range(state.global_step):
                lr_scheduler.step()
