"""GRPO on the SFT adapter with TRL's GRPOTrainer and the legal-citation rewards.

For every question of the training file, ``grpo.num_generations`` answers are sampled with the
policy (transformers' ``generate``, KV cache on), scored by :class:`legaltune.train.rewards.LegalRewards`
(weights ``grpo.reward_*``; each reward's mean and std are logged as ``rewards/<name>/…``), and the
policy moves towards the answers that score above their group's mean. With ``grpo.beta`` > 0 a KL
term keeps it near the reference: a frozen copy of the init adapter (TRL's "ref" adapter on the
same base). Evaluation samples one answer per held-out question and logs the same rewards
(``eval_rewards/…``); ``logging.gen_eval_examples`` adds the greedy answers' citation F1 and
hallucinated rate as for SFT.
"""

from __future__ import annotations

from typing import Any

from trl import GRPOConfig, GRPOTrainer

from legaltune.data.rl_prompts import PreparedPrompts, prepare_prompts
from legaltune.run.checkpoint import AtomicCheckpoints
from legaltune.train.after_sft import AfterSFT, CountsAnswerTokens, SavesTrainedAdapterOnly
from legaltune.train.rewards import LegalRewards


class LegalGRPOTrainer(AtomicCheckpoints, SavesTrainedAdapterOnly, CountsAnswerTokens, GRPOTrainer):
    """TRL's GRPOTrainer, counting the sampled answer tokens it trains on."""


def _dataset(rows: list[dict[str, Any]]) -> Any:
    from datasets import Dataset

    return Dataset.from_list(rows) if rows else None


class GrpoMethod(AfterSFT):
    """training.method grpo."""

    name = "grpo"

    def __init__(self, cfg, notice=None):
        super().__init__(cfg, notice)
        self.reference = (
            "the init adapter, frozen (TRL's 'ref' adapter copy on the same base), for the KL term"
            if cfg.grpo.beta > 0
            else "none (grpo.beta 0: no KL term, no reference pass)"
        )

    def prepare(self, tokenizer: Any) -> PreparedPrompts:
        return prepare_prompts(self.cfg, tokenizer)

    def plan_notes(self) -> list[str]:
        g, t = self.cfg.grpo, self.cfg.training
        per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps
        return [
            *super().plan_notes(),
            f"grpo: {per_step} answers sampled per optimizer step ({per_step // g.num_generations} questions × "
            f"{g.num_generations}), up to {g.max_completion_length} tokens each",
        ]

    def eval_dataset(self, data: PreparedPrompts) -> Any:
        return _dataset(data.eval)

    def make_trainer(self, model: Any, args: Any, tokenizer: Any, data: PreparedPrompts, eval_ds: Any) -> Any:
        from legaltune.corpus import build_corpus
        from legaltune.corpus.verify import Verifier
        from legaltune.generate.answers import stop_token_ids

        g = self.cfg.grpo
        fmt = data.formatter
        if fmt.template is not None:  # TRL renders the prompts with the tokenizer's own template
            tokenizer.chat_template = fmt.template
        stops = stop_token_ids(tokenizer, fmt.end_of_turn.strip())
        model.generation_config.eos_token_id = stops  # sampling stops at the end-of-turn token
        rewards = LegalRewards(Verifier(build_corpus(self.cfg.data.corpus_file)), stops)
        funcs, weights = rewards.weighted(g)
        # TRL counts the prompt and sampled tokens itself; transformers' count would look for input_ids
        kwargs = {**self.common_args(args), "include_num_input_tokens_seen": "no"}
        config = GRPOConfig(
            **kwargs,
            num_generations=g.num_generations,
            num_generations_eval=1,  # one sampled answer per held-out question: its rewards are logged
            max_completion_length=g.max_completion_length,
            temperature=g.temperature,
            top_p=g.top_p,
            beta=g.beta,
            loss_type=g.loss_type,
            scale_rewards=g.scale_rewards,
            reward_weights=weights,
            # legaltune turns the model's cache off for training (packed-row detection); sampling needs it
            generation_kwargs={"use_cache": True},
        )
        return LegalGRPOTrainer(
            model=model,
            reward_funcs=funcs,
            args=config,
            train_dataset=_dataset(data.train),
            eval_dataset=eval_ds,
            processing_class=tokenizer,
        )
