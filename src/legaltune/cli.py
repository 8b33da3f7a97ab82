"""The `legaltune` command: one subcommand per stage, each a thin call into the package.

Heavy libraries (torch, transformers) are imported inside the commands that need them so that
`legaltune --help` and `legaltune plan` start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from legaltune.config.fields import ConfigError

EXIT_USAGE = 2
EXIT_NOT_BUILT = 3


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("config", nargs=None if required else "?", help="YAML config (presets in configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set lora.r=16",
    )


def cmd_plan(args: argparse.Namespace) -> int:
    from legaltune.config.load import load_config
    from legaltune.plan.core import make_plan, parse_size
    from legaltune.plan.render import render_plan

    cfg = load_config(args.config, args.overrides)
    examples = args.examples
    if examples is None and cfg.data.train_file:
        from legaltune.data.sources import count_train_examples

        examples = count_train_examples(cfg)
    plan = make_plan(
        cfg,
        gpu_memory=parse_size(args.gpu_memory) if args.gpu_memory else None,
        world_size=args.world_size,
        train_examples=examples,
    )
    if args.json:
        print(json.dumps(plan.to_dict(), ensure_ascii=False, indent=2))
    else:
        render_plan(plan)
    return 1 if any(lint.level == "error" for lint in plan.lints) else 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from legaltune.config.load import config_to_dict, load_config

    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True), end="")
    return 0


def _not_built(name: str, issue: int) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        print(f"legaltune {name}: not built yet (tracked in issue #{issue}).", file=sys.stderr)
        return EXIT_NOT_BUILT

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="legaltune",
        description="LoRA/QLoRA fine-tuning of LLMs for Vietnamese legal question answering.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plan", help="parameters, steps, memory and lints of a config — no weights loaded")
    p.description = (
        "Print total/trainable parameters (exactly as PEFT counts them), the LoRA scale, effective batch, "
        "steps and warm-up, an estimate of peak GPU memory with its breakdown, and lints against seed 003's "
        "recommendations. Exits 1 when a lint is an error (e.g. the run does not fit the GPU)."
    )
    _add_config_args(p)
    p.add_argument("--gpu-memory", help="GPU memory to check the fit against, e.g. 80GiB, 24GB, 141GiB")
    p.add_argument("--world-size", type=int, default=1, help="number of GPUs (data parallel)")
    p.add_argument("--examples", type=int, help="number of training examples, when the config names no data")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("config", help="print the resolved config (defaults + file + --set) as YAML")
    _add_config_args(p, required=False)
    p.set_defaults(func=cmd_config)

    stubs = [
        ("train", "fine-tune with LoRA/QLoRA (SFTTrainer) and write a run directory", 4),
        ("data", "check a dataset: schema, token lengths, masking, packing efficiency", 3),
        ("eval", "evaluate base vs tuned: loss, EM/F1/ROUGE-L/BLEU, citation accuracy", 5),
        ("generate", "batch-answer questions from a JSONL file with a tuned run", 5),
        ("chat", "interactive multi-turn chat with a tuned run", 5),
        ("merge", "merge the LoRA adapter into the base model (16-bit safetensors)", 5),
        ("export", "export a run to GGUF", 5),
        ("report", "regenerate a run's HTML report with plots", 5),
        ("demo", "fine-tune the embedded model on the bundled sample and show the result", 4),
    ]
    for name, help_text, issue in stubs:
        p = sub.add_parser(name, help=help_text)
        p.description = help_text[0].upper() + help_text[1:] + f". (Not built yet: issue #{issue}.)"
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(func=_not_built(name, issue))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, FileNotFoundError) as exc:
        # Domain errors carry their own "what and how to fix" text; a traceback adds nothing.
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
