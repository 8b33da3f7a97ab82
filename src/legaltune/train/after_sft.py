"""Training methods after SFT (training.method dpo / orpo / grpo), as `legaltune train` runs them.

:func:`legaltune.train.trainer.run_training` keeps the run directory, plan, callbacks, metrics,
checkpoints, resume, saving and report of SFT; a method supplies what differs: its data
(:meth:`AfterSFT.prepare`), the lengths its plan sizes micro-batches by, its model (the init adapter
loaded trainable on the base, with the speed engine where it applies) and its TRL trainer, built
from the same TrainingArguments as SFT's (:func:`legaltune.train.trainer.build_args`) plus the
method's own keys.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import torch
from transformers import TrainingArguments

from legaltune.config.schema import Config
from legaltune.train.init_adapter import (
    InitAdapter,
    adopt_lora_settings,
    load_trainable,
    resolve_init_adapter,
)


def training_arguments(args: Any) -> dict[str, Any]:
    """Every TrainingArguments field of ``args`` (SFT's, from build_args), to build another TRL config."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}


class CountsAnswerTokens:
    """Mixin: counts the answer tokens the loss covers (metrics.jsonl's trained_tokens), read from the
    inputs TRL's loss receives: ``completion_mask`` (DPO, GRPO) or ``*_labels`` (ORPO)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._answer_tokens = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        if model.training:
            if "completion_mask" in inputs:
                self._answer_tokens += int(inputs["completion_mask"].sum())
            else:  # ORPO's columns, which transformers' input-token count cannot find (it looks for input_ids)
                self._answer_tokens += sum(
                    int((v != -100).sum())
                    for k, v in inputs.items()
                    if k.endswith("_labels") and torch.is_tensor(v)
                )
                if self.args.include_num_input_tokens_seen == "no":
                    self.state.num_input_tokens_seen += sum(
                        int(inputs[f"{side}_attention_mask"].sum()) for side in ("chosen", "rejected")
                    )
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)  # type: ignore[misc]

    def trained_tokens_seen(self) -> int:
        return self._answer_tokens

    def set_trained_tokens(self, n: int) -> None:
        """Resume: the count of the steps before the checkpoint."""
        self._answer_tokens = n


class SavesTrainedAdapterOnly:
    """Mixin: checkpoints and adapter/ hold the trained adapter only. TRL's reference adapter ("ref",
    a frozen copy of the init adapter) would be saved beside it by PEFT; it is rebuilt from the init
    adapter at every start, resume included, so a saved copy would only double the files."""

    def _save(self, output_dir=None, state_dict=None):  # type: ignore[override]
        import shutil
        from pathlib import Path

        super()._save(output_dir, state_dict)  # type: ignore[misc]
        model = self.accelerator.unwrap_model(self.model)  # type: ignore[attr-defined]
        out = Path(output_dir if output_dir is not None else self.args.output_dir)  # type: ignore[attr-defined]
        if "ref" in getattr(model, "peft_config", {}) and (out / "ref").is_dir():
            shutil.rmtree(out / "ref")


class AfterSFT:
    """What a method after SFT adds to `legaltune train` (see module doc); subclasses per method."""

    name = ""
    reference = ""  # what the reference model is, for the plan line and train_summary.json

    def __init__(self, cfg: Config, notice: Any = None):
        self.cfg = cfg
        self.say = notice or (lambda m: print(f"note: {m}", file=sys.stderr))
        self.adapter: InitAdapter | None = None
        if cfg.training.init_adapter is not None:
            # before any data or weight: a wrong path fails in milliseconds
            self.adapter = resolve_init_adapter(cfg)
            for line in adopt_lora_settings(cfg, self.adapter):
                self.say(line)

    def prepare(self, tokenizer: Any) -> Any:
        raise NotImplementedError

    def plan_lengths(self, data: Any) -> list[int]:
        return data.lengths()

    def plan_notes(self) -> list[str]:
        start = f"from {self.adapter.path}" if self.adapter else "a new LoRA adapter (lora.*)"
        return [f"{self.name}: {start}; reference: {self.reference}"]

    def prepare_model(self, model: Any) -> Any:
        """The base ``model`` with the init adapter loaded trainable (or a new LoRA), speed engine applied."""
        from legaltune.speed.apply import apply_speed
        from legaltune.speed.state import set_speed_report

        if self.adapter is not None:
            peft_model = load_trainable(model, self.adapter)
        else:
            from legaltune.model.lora import apply_lora

            peft_model = apply_lora(model, self.cfg.lora, gradient_checkpointing=False)
        # fused LoRA linears follow the active adapter at call time (TRL switches to the frozen reference
        # copy and back inside each step); compiled layers would re-trace at every switch and generation
        # shape, so layers stay eager here
        report = apply_speed(
            peft_model, mode=self.cfg.speed.mode, kernels=self.cfg.speed.kernels, compile=False
        )
        if report.mode != "off":
            report.notes.append(
                f"{self.name}: layers not compiled (the reference and generation passes change adapters and shapes "
                "within a step); checkpointing, when on, is TRL's recompute"
            )
        report.checkpointing = "recompute" if self.checkpointing() else "none"
        set_speed_report(peft_model, report)
        return peft_model

    def checkpointing(self) -> bool:
        """Whether activations are recomputed (TRL's gradient checkpointing; the offload mode is SFT's)."""
        o, lo = self.cfg.optimization, self.cfg.lora
        return bool(o.gradient_checkpointing and lo.use_gradient_checkpointing)

    def common_args(self, args: Any) -> dict[str, Any]:
        kwargs = training_arguments(args)
        want = self.checkpointing()
        kwargs["gradient_checkpointing"] = want
        if "activation_checkpointing" in kwargs:
            kwargs["activation_checkpointing"] = want
        if want:
            kwargs["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
            if "activation_checkpointing_kwargs" in kwargs:
                kwargs["activation_checkpointing_kwargs"] = {"use_reentrant": False}
        return kwargs

    def eval_dataset(self, data: Any) -> Any:
        raise NotImplementedError

    def make_trainer(self, model: Any, args: Any, tokenizer: Any, data: Any, eval_ds: Any) -> Any:
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "init_adapter": str(self.adapter.path) if self.adapter else None,
            "reference": self.reference,
        }
