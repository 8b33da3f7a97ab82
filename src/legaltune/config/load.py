"""Load a config from YAML plus ``--set section.key=value`` overrides, validate it whole, save it.

Problems from the file, from overrides and from cross-field rules are collected and raised
together in one ConfigError; each names its key path and, for file keys, ``file:line``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from legaltune.config.distributed_rules import check_distributed
from legaltune.config.fields import ConfigError, Problem, suggest, validate_section
from legaltune.config.gen_metrics import GEN_METRICS
from legaltune.config.method_rules import method_checks
from legaltune.config.schema import SECTIONS, Config


def _plain_words(node: yaml.Node) -> Any:
    """The source text of a plain (unquoted) scalar, a list of those for a sequence, else None."""
    if isinstance(node, yaml.ScalarNode):
        return node.value if node.style is None else None
    if isinstance(node, yaml.SequenceNode):
        return [_plain_words(item) if isinstance(item, yaml.ScalarNode) else None for item in node.value]
    return None


def _yaml_index(text: str, filename: str, problems: list[Problem]) -> tuple[dict[str, str], dict[str, Any]]:
    """Map each `section.key` path to `file:line` and to the words its value was written as, and
    report duplicated keys (YAML keeps the last silently)."""
    lines: dict[str, str] = {}
    words: dict[str, Any] = {}
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode):
        return lines, words

    def walk(node: yaml.MappingNode, prefix: str) -> None:
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            path = f"{prefix}.{key}" if prefix else key
            where = f"{filename}:{key_node.start_mark.line + 1}"
            if key in seen:
                problems.append(Problem(path, "key appears twice", "remove one of the two", where))
            seen.add(key)
            lines[path] = where
            words[path] = _plain_words(value_node)
            if isinstance(value_node, yaml.MappingNode) and not prefix:
                walk(value_node, path)

    walk(root, "")
    return lines, words


def parse_override(item: str) -> tuple[str, Any, Any]:
    """`lora.r=16` → ("lora.r", 16, "16"): the key, the value parsed as YAML (so `true`, `[a, b]`,
    `null` work) and the words it was written as, which string and choice fields keep
    (`logging.eval_strategy=no` is "no", not False; see fields.read_as_written)."""
    if "=" not in item:
        raise ConfigError(
            [Problem(item, "override must look like section.key=value", "e.g. --set lora.r=16")]
        )
    key, raw = item.split("=", 1)
    key = key.strip()
    if not raw.strip():
        return key, "", None
    try:
        value = yaml.safe_load(raw)
        words = _plain_words(yaml.compose(raw, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise ConfigError(
            [Problem(key, f"cannot parse value {raw!r}: {exc}", "quote it or fix its YAML")]
        ) from None
    return key, value, words


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build a validated Config from a YAML file (or the defaults) and overrides."""
    problems: list[Problem] = []
    raw: dict[str, Any] = {}
    lines: dict[str, str] = {}
    words: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                [Problem(str(path), "config file not found", "check the path; presets are in configs/")]
            )
        text = path.read_text(encoding="utf-8")
        try:
            lines, words = _yaml_index(text, str(path), problems)
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError([Problem(str(path), f"not valid YAML: {exc}", "fix the YAML syntax")]) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                [Problem(str(path), "top level must be a mapping of sections", "see configs/demo.yaml")]
            )
        raw = loaded
    for item in overrides or []:
        key, value, written = parse_override(item)
        parts = key.split(".")
        if len(parts) != 2:
            problems.append(
                Problem(key, "override key must be section.key", "e.g. --set training.learning_rate=2e-4")
            )
            continue
        section = raw.setdefault(parts[0], {})
        if isinstance(section, dict):
            section[parts[1]] = value
            lines[key] = "--set"
            words[key] = written
    return build_config(raw, problems, lines, source=str(path) if path else None, words=words)


def build_config(
    raw: dict[str, Any],
    problems: list[Problem] | None = None,
    lines: dict[str, str] | None = None,
    source: str | None = None,
    words: dict[str, Any] | None = None,
) -> Config:
    """Validate a nested dict into a Config, raising ConfigError with every problem found.

    ``words`` maps key paths to the plain YAML text of their values, so that string and choice
    fields keep what the user wrote (``no``, ``off``) where YAML 1.1 would read a boolean."""
    problems = problems if problems is not None else []
    lines = lines or {}
    all_keys = {
        name: f"{sec}.{name}"
        for sec, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
        for name in (f.name, *f.metadata.get("aliases", ()))
    }
    sections: dict[str, Any] = {}
    for key in raw:
        if key not in SECTIONS:
            hint = suggest(key, list(SECTIONS))
            if not hint and key in all_keys:
                hint = f"'{key}' belongs under '{all_keys[key].split('.')[0]}:' (as {all_keys[key]})"
            problems.append(
                Problem(
                    key, "unknown section", hint or f"sections are: {', '.join(SECTIONS)}", lines.get(key, "")
                )
            )
    for name, cls in SECTIONS.items():
        sections[name] = validate_section(cls, raw.get(name), name, problems, lines, all_keys, words)
    cfg = Config(**sections, source=source)
    provided = {f"{sec}.{k}" for sec, d in raw.items() if isinstance(d, dict) for k in d}
    problems.extend(cross_checks(cfg, provided, lines))
    if problems:
        raise ConfigError(problems)
    return cfg


def cross_checks(cfg: Config, provided: set[str], lines: dict[str, str]) -> list[Problem]:
    """Rules that involve more than one field. Mutates cfg only to resolve warm-up defaults."""
    out: list[Problem] = []
    t, lg, d = cfg.training, cfg.logging, cfg.data

    def bad(path: str, message: str, fix: str) -> None:
        out.append(Problem(path, message, fix, lines.get(path, "")))

    if cfg.model.dtype is None:  # the seed's dtype=None means "choose for me"
        cfg.model.dtype = "auto"
    check_distributed(cfg, bad)
    # warmup_ratio has the default (seed 003's 5 %); a user who writes warmup_steps means the count,
    # and a --set of one replaces the other written in the file.
    by_set = {k: lines.get(f"training.{k}") == "--set" for k in ("warmup_steps", "warmup_ratio")}
    if t.warmup_steps is not None and t.warmup_ratio is not None and by_set["warmup_ratio"]:
        if not by_set["warmup_steps"]:
            t.warmup_steps = None
    if t.warmup_steps is not None:
        if (
            "training.warmup_ratio" in provided
            and t.warmup_ratio is not None
            and by_set["warmup_ratio"] == by_set["warmup_steps"]
        ):
            bad(
                "training.warmup_steps",
                "warmup_steps and warmup_ratio are both set",
                "keep one: warmup_steps (a count) or warmup_ratio (a fraction of total steps)",
            )
        else:
            t.warmup_ratio = None
    if t.max_steps == 0:
        bad(
            "training.max_steps",
            "0 steps would train nothing",
            "set training.max_steps: -1 (train num_train_epochs) or a positive count",
        )
    if t.min_lr_rate is not None and t.lr_scheduler_type != "cosine_with_min_lr":
        bad(
            "training.min_lr_rate",
            "only used by lr_scheduler_type cosine_with_min_lr",
            "remove it, or set training.lr_scheduler_type: cosine_with_min_lr",
        )
    if t.early_stopping_patience is not None and not t.load_best_model_at_end:
        bad(
            "training.early_stopping_patience",
            "early stopping needs load_best_model_at_end",
            "set training.load_best_model_at_end: true",
        )
    metric = t.metric_for_best_model.removeprefix("eval_")
    if metric != "loss" and metric not in GEN_METRICS:
        bad(
            "training.metric_for_best_model",
            f"{t.metric_for_best_model!r} is not a metric legaltune computes",
            "use eval_loss or one of " + ", ".join(f"eval_{m}" for m in GEN_METRICS),
        )
    elif metric != "loss" and lg.gen_eval_examples == 0:
        bad(
            "training.metric_for_best_model",
            f"{t.metric_for_best_model!r} is a generation score, but logging.gen_eval_examples is 0",
            "set logging.gen_eval_examples (e.g. 16) or use eval_loss",
        )
    if lg.gen_eval_examples and lg.eval_strategy == "no":
        bad(
            "logging.gen_eval_examples",
            "generation scores are computed at evaluations, but eval_strategy is 'no'",
            "set logging.eval_strategy (steps or epoch), or gen_eval_examples: 0",
        )
    if t.load_best_model_at_end:
        if lg.eval_strategy == "no":
            bad(
                "training.load_best_model_at_end",
                "needs evaluations, but eval_strategy is 'no'",
                "set logging.eval_strategy: epoch (with data.eval_file or data.val_split)",
            )
        elif lg.save_strategy != lg.eval_strategy:
            bad(
                "logging.save_strategy",
                f"load_best_model_at_end needs save_strategy == eval_strategy ({lg.save_strategy} vs {lg.eval_strategy})",
                f"set logging.save_strategy: {lg.eval_strategy}",
            )
        elif (
            lg.save_strategy == "steps" and lg.save_steps and lg.eval_steps and lg.save_steps % lg.eval_steps
        ):
            bad(
                "logging.save_steps",
                "must be a multiple of eval_steps for load_best_model_at_end",
                f"set logging.save_steps: {lg.eval_steps * max(1, round(lg.save_steps / lg.eval_steps))}",
            )
    for strat, steps in (("save", lg.save_steps), ("eval", lg.eval_steps)):
        if getattr(lg, f"{strat}_strategy") == "steps" and steps is None:
            bad(
                f"logging.{strat}_steps",
                f"{strat}_strategy is 'steps' but {strat}_steps is not set",
                f"set logging.{strat}_steps: 500 (or logging.{strat}_strategy: epoch)",
            )
    if d.train_file and lg.eval_strategy != "no" and not d.eval_file and d.val_split == 0:
        bad(
            "logging.eval_strategy",
            f"eval_strategy is '{lg.eval_strategy}' but there is no evaluation data",
            "set data.eval_file: path/to/eval.jsonl, or data.val_split: 0.1, or logging.eval_strategy: no",
        )
    if d.encoding != "auto":
        import codecs

        try:
            codecs.lookup(d.encoding)
        except LookupError:
            bad(
                "data.encoding",
                f"{d.encoding!r} is not a text encoding Python knows",
                "set data.encoding: auto, or a codec name such as data.encoding: cp1258",
            )
    if d.format == "alqac" and not d.corpus_file:
        bad(
            "data.corpus_file",
            "format alqac joins questions with a law corpus, but corpus_file is not set",
            "set data.corpus_file: path/to/corpus.json",
        )
    if d.context_fill != "none" and not d.use_context:
        bad(
            "data.context_fill",
            f"{d.context_fill!r} fills contexts, but data.use_context is false so the model would not see them",
            "set data.use_context: true, or data.context_fill: none",
        )
    if bool(cfg.lora.use_gradient_checkpointing) and not cfg.optimization.gradient_checkpointing:
        bad(
            "optimization.gradient_checkpointing",
            f"false, but lora.use_gradient_checkpointing is {cfg.lora.use_gradient_checkpointing!r}",
            "set optimization.gradient_checkpointing: true, or also lora.use_gradient_checkpointing: false "
            "to keep all activations",
        )
    if "none" in lg.report_to and len(lg.report_to) > 1:
        bad("logging.report_to", "'none' combined with other sinks", "set logging.report_to: [none] alone")
    out.extend(method_checks(cfg, provided, lines))
    return out


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain data (what is saved into each run directory)."""
    return {name: dataclasses.asdict(getattr(cfg, name)) for name in SECTIONS}


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML; it loads back to an equal Config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# resolved legaltune config (from {cfg.source or 'defaults'})\n"
    path.write_text(
        header + yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    return path
