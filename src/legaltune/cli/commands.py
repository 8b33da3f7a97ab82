"""The `legaltune` subcommands, each a thin call into the package.

Heavy libraries (torch, transformers) are imported inside the commands that need them so that
`legaltune --help` and `legaltune plan` start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from legaltune.cli.exit_codes import EXIT_INTERRUPTED, EXIT_OK
from legaltune.errors import InputError, UserError


def _config_from_args(args: argparse.Namespace):
    from legaltune.config.load import load_config

    return load_config(args.config, args.overrides)


def cmd_plan(args: argparse.Namespace) -> int:
    from legaltune.plan.core import make_plan, parse_size
    from legaltune.plan.render import render_plan
    from legaltune.speed.policy import host_memory_available

    cfg = _config_from_args(args)
    if cfg.training.init_adapter is not None:
        from legaltune.train.init_adapter import plan_with_init_adapter

        for line in plan_with_init_adapter(cfg):
            print(f"note: {line}", file=sys.stderr)
    if args.from_data:
        return _plan_from_data(cfg, args)
    examples = args.examples
    if examples is None and cfg.data.train_file:
        from legaltune.data.sources import count_train_examples

        examples = count_train_examples(cfg)
    plan = make_plan(
        cfg,
        gpu_memory=parse_size(args.gpu_memory) if args.gpu_memory else None,
        world_size=args.world_size,
        local_ranks=args.gpus_per_node,
        train_examples=examples,
        host_memory=parse_size(args.host_memory) if args.host_memory else host_memory_available(),
    )
    if cfg.data.train_file and cfg.speed.mode == "auto":
        # the worst case can choose other checkpointing than train will (seed 000: 29/32 layers, not none)
        plan.memory.notes.append(
            f"planned for {plan.memory.tokens_per_micro_batch:,} tokens a micro-batch, the config's worst case; "
            "`legaltune train` plans for the largest micro-batch the data makes, and may train it in several "
            "forwards (speed.forward_tokens): `plan --from-data` shows that plan"
        )
    if args.json:
        print(json.dumps(plan.to_dict(), ensure_ascii=False, indent=2))
    else:
        render_plan(plan)
    return 1 if any(lint.level == "error" for lint in plan.lints) else 0


def _plan_from_data(cfg: Any, args: argparse.Namespace) -> int:
    """`plan --from-data`: the plan `legaltune train` makes (plan/speed.py), from the prepared data."""
    import torch

    from legaltune.data.prepare import prepare_data
    from legaltune.model.load import resolve_attn
    from legaltune.model.tokenizer import load_tokenizer
    from legaltune.plan.core import parse_size
    from legaltune.plan.render import render_plan
    from legaltune.plan.speed import plan_run
    from legaltune.speed.policy import host_memory_available

    if not cfg.data.train_file:
        raise InputError("--from-data needs data.train_file in the config (or --set data.train_file=FILE)")
    data = prepare_data(cfg, load_tokenizer(cfg.model))
    gpu = parse_size(args.gpu_memory) if args.gpu_memory else None
    on_cuda = gpu is not None or torch.cuda.is_available()
    if gpu is None and torch.cuda.is_available():
        gpu = torch.cuda.get_device_properties(0).total_memory
    plan = plan_run(
        cfg,
        [len(r["input_ids"]) for r in data.train],
        on_cuda=on_cuda,
        attn=resolve_attn(cfg.model.attn_implementation)
        if not args.gpu_memory
        else cfg.model.attn_implementation,
        gpu_memory=gpu,
        host_memory=parse_size(args.host_memory) if args.host_memory else host_memory_available(),
        world_size=args.world_size,
        local_ranks=max(1, min(args.gpus_per_node or args.world_size, args.world_size)),
        varlen=True if args.gpu_memory else None,
    )
    if args.json:
        out = plan.plan.to_dict() if plan.plan else {}
        out["run"] = plan.to_dict()
        print(json.dumps(out, ensure_ascii=False, indent=2))
    else:
        if plan.plan is not None:
            render_plan(plan.plan)
        print(plan.summary(), *plan.notes, sep="\n  ")
        for problem in plan.problems:
            print(f"error: {problem}")
    return 1 if plan.problems else 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from legaltune.config.load import config_to_dict

    cfg = _config_from_args(args)
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True), end="")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.action == "make-preference":
        from legaltune.train.make_preference import cmd_make_preference

        return cmd_make_preference(args)
    from legaltune.config.load import load_config
    from legaltune.data.check import render_check
    from legaltune.data.prepare import prepare_data
    from legaltune.model.tokenizer import load_tokenizer

    overrides = list(args.overrides)
    if args.data:
        overrides += [f"data.train_file={args.data}", "logging.eval_strategy=no"]
    if args.model:
        overrides.append(f"model.model_name={args.model}")
    if not args.config and not args.data:
        raise InputError("give a CONFIG, or --data FILE (and --model NAME)")
    cfg = load_config(args.config, overrides)
    prep = prepare_data(cfg, load_tokenizer(cfg.model))
    if args.json:
        print(json.dumps(prep.stats.to_dict(), ensure_ascii=False, indent=2))
    else:
        render_check(prep)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from legaltune.distributed.launch import launch, wants_launch

    if wants_launch(args):
        return launch(args, args.argv)
    from legaltune.distributed.env import is_main
    from legaltune.run.lock import check_free
    from legaltune.run.session import check_before_data, refuse_flags

    cfg = _config_from_args(args)
    if cfg.training.init_adapter is not None:
        from legaltune.train.init_adapter import resolve_init_adapter

        resolve_init_adapter(cfg)  # a wrong path fails before torch and the trainers import

    resume: str | bool | None = args.resume if args.resume != "" else True
    refuse_flags(resume, args.weights_only)
    if is_main():  # the other ranks of a distributed run would race rank 0, which is already writing
        found = check_before_data(cfg, resume)  # in milliseconds: before torch and transformers load
        if found is not None:
            check_free(found[0].lock)
    from legaltune.train.trainer import run_training

    result = run_training(
        cfg, resume=resume, weights_only=args.weights_only, allow_plan_errors=args.ignore_plan_errors
    )
    if result.nothing_to_do:
        return EXIT_OK  # the notice said so: the run had finished
    if not is_main():
        return EXIT_INTERRUPTED if result.interrupted else EXIT_OK
    print(f"run directory: {result.run_dir}")
    print(f"adapter: {result.adapter_dir}")
    if result.eval_loss_after is not None:
        print(f"eval loss: {result.eval_loss_after:.4f}")
    if result.interrupted:
        print(
            "training was interrupted; continue with: legaltune train CONFIG --resume " + str(result.run_dir)
        )
        return EXIT_INTERRUPTED
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from legaltune.demo import run_demo

    return run_demo(_config_from_args(args))


def cmd_merge(args: argparse.Namespace) -> int:
    import warnings

    from legaltune.export.merge import QuantizedBaseWarning, merge_run

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", QuantizedBaseWarning)
        out = merge_run(args.run, args.output, args.dtype, overwrite=args.overwrite)
    for w in caught:
        if issubclass(w.category, QuantizedBaseWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    print(f"merged model: {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import warnings

    from legaltune.export.gguf_export import export_gguf

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        out = export_gguf(
            args.run, args.output, args.type, overwrite=args.overwrite, modelfile=not args.no_modelfile
        )
    for w in caught:
        if issubclass(w.category, UserWarning) and "legaltune" in w.filename:
            print(f"warning: {w.message}", file=sys.stderr)
    print(f"GGUF written: {out}")
    if not args.no_modelfile:
        print(f"Ollama Modelfile: {out.with_name(out.name.removesuffix('.gguf') + '.Modelfile')}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console

    from legaltune.evaluate.run_eval import evaluate_run
    from legaltune.evaluate.table import render_eval
    from legaltune.report.html import write_report

    result = evaluate_run(
        args.run,
        data_file=args.data,
        limit=args.limit,
        base_model=args.base_model,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_p=args.top_p,
        compare_base=not args.no_base,
        compute_loss=not args.no_loss,
    )
    render_eval(result, Console())
    print(f"report: {write_report(args.run)}")  # refreshed with the eval table
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from legaltune.generate.file import generate_file

    done = generate_file(
        args.input,
        args.output,
        run_dir=args.run,
        model_name=args.model,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_p=args.top_p,
        verify=not args.no_verify,
        context_fill=args.context_fill,
    )
    print(f"{done['generated']} answered, {done['skipped']} already answered, in {done['output']}")
    check = done.get("citation_check")
    if check and check["citations"]:

        def rate(v: float | None) -> str:
            return "—" if v is None else f"{100 * v:.1f} %"

        print(
            f"citations: {check['citations']} in {check['answers_with_citations']} answers, {check['checked']} "
            f"checked against the law corpus: hallucinated {rate(check['hallucinated_rate'])}, supported "
            f"{rate(check['supported_rate'])} (each row's 'citations' has the ✓/✗ marks)"
        )
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from legaltune.generate.chat import run_chat

    return run_chat(
        args.run,
        args.model,
        stream=not args.no_stream,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_p=args.top_p,
        verify=not args.no_verify,
        context_fill=args.context_fill,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from legaltune.serve.server import run_server

    return run_server(
        args.run,
        args.model,
        host=args.host,
        port=args.port,
        max_batch_size=args.max_batch_size,
        max_pending=args.max_pending,
        citations=args.citations,
        threads=args.threads,
    )


def cmd_corpus(args: argparse.Namespace) -> int:
    from legaltune.cli.corpus import run_corpus_command

    return run_corpus_command(args)


def cmd_ui(args: argparse.Namespace) -> int:
    from legaltune.ui.server import run_ui

    return run_ui(
        args.runs,
        args.run,
        args.model,
        host=args.host,
        port=args.port,
        threads=args.threads,
        max_batch_size=args.max_batch_size,
        max_pending=args.max_pending,
    )


def cmd_report(args: argparse.Namespace) -> int:
    from legaltune.report.html import write_report

    if (args.run_dir is None) == (args.run is None):
        raise UserError(
            "give the run directory once: legaltune report RUN_DIR, or legaltune report --run RUN_DIR"
        )
    print(write_report(args.run_dir or args.run))
    return 0
