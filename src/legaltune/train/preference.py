"""DPO and ORPO on the SFT adapter, with TRL's DPOTrainer and ORPOTrainer.

Pairs arrive tokenized by :mod:`legaltune.data.preference` (the run's chat template, the answer up to
its end-of-turn token, truncation counted), so both trainers skip their own tokenization.

The DPO reference: TRL, given a PEFT model that already carries an adapter, adds a frozen copy of it
as a second adapter ("ref") and computes the reference log-probabilities with that one active. So the
reference is the SFT model itself (what DPO's KL term is about), and it costs one more set of LoRA
weights, not a second base model; its forward runs without gradients. (With a *new* adapter TRL
would instead disable the adapter, making the base the reference.) ORPO has no reference model: its
loss is the SFT loss on the chosen answer plus ``preference.beta`` times the odds-ratio term.
"""

from __future__ import annotations

from typing import Any

from trl import DPOConfig, DPOTrainer
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from legaltune.data.preference import PreparedPairs, orpo_row, prepare_pairs
from legaltune.run.checkpoint import AtomicCheckpoints
from legaltune.train.after_sft import AfterSFT, CountsAnswerTokens, SavesTrainedAdapterOnly


class LegalDPOTrainer(AtomicCheckpoints, SavesTrainedAdapterOnly, CountsAnswerTokens, DPOTrainer):
    """TRL's DPOTrainer on pairs legaltune tokenized."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # type: ignore[override]
        return dataset  # prompt_ids / chosen_ids / rejected_ids already, as DataCollatorForPreference reads


class LegalORPOTrainer(AtomicCheckpoints, CountsAnswerTokens, ORPOTrainer):
    """TRL's ORPOTrainer on pairs legaltune tokenized (:func:`legaltune.data.preference.orpo_row`)."""

    def tokenize_row(self, feature, model=None):  # type: ignore[override]
        return feature


def _dataset(rows: list[dict[str, Any]], convert: Any = None) -> Any:
    from datasets import Dataset

    if not rows:
        return None
    # "length" (the longer side) is what data.group_by_length groups pairs by, as SFT's rows
    return Dataset.from_list(
        [
            {
                **(convert(r) if convert else r),
                "length": len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])),
            }
            for r in rows
        ]
    )


class PreferenceMethod(AfterSFT):
    """training.method dpo / orpo."""

    def __init__(self, cfg, notice=None):
        super().__init__(cfg, notice)
        self.name = cfg.training.method
        self.reference = (
            "none (ORPO needs no reference model)"
            if self.name == "orpo"
            else "the init adapter, frozen (TRL's 'ref' adapter copy on the same base; no second model)"
            if self.adapter is not None
            else "the base with the adapter disabled"
        )

    def prepare(self, tokenizer: Any) -> PreparedPairs:
        data = prepare_pairs(self.cfg, tokenizer)
        d, st = self.cfg.data, data.stats
        if st.train.not_pairs:
            self.say(
                f"data.train_file {d.train_file}: {st.train.not_pairs} records have no 'rejected' answer and are "
                f"not trained on ({st.train.pairs} pairs are)"
            )
        if st.eval.not_pairs:
            # a config copied from an SFT one keeps its QA eval file: the trainer's evaluation needs pairs
            where = (
                f"the trainer evaluates the {st.eval.pairs} pairs only"
                if data.eval
                else "the trainer has no pair to evaluate (its evaluation is off)"
            )
            self.say(
                f"data.eval_file {d.eval_file}: {st.eval.not_pairs} records have no 'rejected' answer, so {where}; "
                "`legaltune eval --run RUN --data FILE` scores the run's answers on QA records"
            )
        for split, ps in (("train", st.train), ("eval", st.eval)):
            cut = ps.truncated + ps.dropped_overlength + ps.dropped_prompt_too_long
            if cut:
                self.say(
                    f"{split} pairs longer than model.max_seq_length {self.cfg.model.max_seq_length}: "
                    f"{ps.truncated} with their answers cut, {ps.dropped_overlength} dropped (data.overlength: drop), "
                    f"{ps.dropped_prompt_too_long} dropped because the prompt alone fills it; {ps.pairs} pairs kept"
                )
        return data

    def eval_dataset(self, data: PreparedPairs) -> Any:
        return _dataset(data.eval, orpo_row if self.name == "orpo" else None)

    def make_trainer(self, model: Any, args: Any, tokenizer: Any, data: PreparedPairs, eval_ds: Any) -> Any:
        p = self.cfg.preference
        kwargs = self.common_args(args)
        kwargs["max_length"] = self.cfg.model.max_seq_length  # pairs already fit: nothing is cut here
        if self.name == "orpo":
            # CountsAnswerTokens counts the pairs' tokens: transformers' count looks for an input_ids column
            config = ORPOConfig(**{**kwargs, "include_num_input_tokens_seen": "no"}, beta=p.beta)
            return LegalORPOTrainer(
                model=model,
                args=config,
                train_dataset=_dataset(data.train, orpo_row),
                eval_dataset=eval_ds,
                processing_class=tokenizer,
            )
        losses = [p.loss_type] + (["sft"] if p.sft_weight > 0 else [])
        weights = [1.0] + ([p.sft_weight] if p.sft_weight > 0 else [])
        config = DPOConfig(**kwargs, beta=p.beta, loss_type=losses, loss_weights=weights)
        return LegalDPOTrainer(
            model=model,
            args=config,
            train_dataset=_dataset(data.train),
            eval_dataset=eval_ds,
            processing_class=tokenizer,
        )
