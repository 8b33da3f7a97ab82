"""Config rules of the training methods after SFT (training.method dpo / orpo / grpo).

Called by :func:`legaltune.config.load.cross_checks`; like every rule there, each problem names its
key path and the fix. Resolves one default: the learning rate of a method after SFT is seed 003's
rate for reinforcement learning unless the config sets one.
"""

from __future__ import annotations

from legaltune.config.fields import Problem
from legaltune.config.schema import PREFERENCE_METHODS, RL_LEARNING_RATE, Config

_SECTION_METHODS = {"preference": PREFERENCE_METHODS, "grpo": ("grpo",)}


def method_checks(cfg: Config, provided: set[str], lines: dict[str, str]) -> list[Problem]:
    """Problems of the method-specific keys (and the learning-rate default; mutates cfg for it)."""
    out: list[Problem] = []
    t, g = cfg.training, cfg.grpo
    method = t.method

    def bad(path: str, message: str, fix: str) -> None:
        out.append(Problem(path, message, fix, lines.get(path, "")))

    # a key of a section the method does not read would be silently ignored (defaults are fine: a
    # resolved config.yaml lists every section)
    for key in sorted(provided):
        section, _, name = key.partition(".")
        if section not in _SECTION_METHODS or method in _SECTION_METHODS[section]:
            continue
        value = getattr(getattr(cfg, section), name, None)
        if value != getattr(type(getattr(cfg, section))(), name, value):
            bad(
                key,
                f"only used by training.method {' / '.join(_SECTION_METHODS[section])}, but the method is {method!r}",
                f"remove it, or set training.method: {_SECTION_METHODS[section][0]}",
            )
    if method == "sft":
        if t.init_adapter is not None:
            bad(
                "training.init_adapter",
                "only dpo / orpo / grpo start from an adapter; sft trains a new one",
                "remove training.init_adapter, or set training.method: dpo (or orpo, grpo)",
            )
        return out
    if "training.learning_rate" not in provided:
        t.learning_rate = RL_LEARNING_RATE
    if t.init_adapter is None and method != "orpo":
        bad(
            "training.init_adapter",
            f"{method} continues an SFT adapter, but none is named",
            "set training.init_adapter: runs/<your SFT run> (a run directory) or an adapter directory",
        )
    if cfg.data.packing:
        bad(
            "data.packing",
            f"{method} keeps each prompt with its answers; packing is for sft",
            "set data.packing: false",
        )
    if "lm_head" in cfg.lora.target_modules:
        bad(
            "lora.target_modules",
            f"{method} computes log-probabilities from lm_head's weight directly (TRL), so an adapter on lm_head "
            "would never train",
            "remove lm_head from lora.target_modules",
        )
    if method != "grpo":
        return out
    group = t.per_device_train_batch_size * t.gradient_accumulation_steps
    if group % g.num_generations:
        bad(
            "grpo.num_generations",
            f"{g.num_generations} does not divide per_device_train_batch_size × gradient_accumulation_steps = {group}"
            " (the answers sampled together)",
            f"set grpo.num_generations to a divisor of {group}, or change the batch",
        )
    if g.max_completion_length >= cfg.model.max_seq_length:
        bad(
            "grpo.max_completion_length",
            f"{g.max_completion_length} leaves no room for the prompt within model.max_seq_length "
            f"{cfg.model.max_seq_length}",
            "lower grpo.max_completion_length or raise model.max_seq_length",
        )
    weights = (g.reward_citation, g.reward_exists, g.reward_supported, g.reward_format)
    if not any(weights):
        bad(
            "grpo.reward_citation",
            "every reward weight is 0: nothing to learn from",
            "give at least one of grpo.reward_citation, reward_exists, reward_supported, reward_format a weight > 0",
        )
    return out
