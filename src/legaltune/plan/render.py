"""Print a Plan for people (rich tables) — JSON output is Plan.to_dict."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from legaltune.plan.memory import CONTEXT_BYTES, GIB
from legaltune.plan.result import Plan

_LEVEL_STYLE = {"error": "bold red", "warn": "yellow", "info": "cyan"}


def render_plan(plan: Plan, console: Console | None = None) -> None:
    console = console or Console()
    c = plan.config
    p = plan.params
    console.print(f"[bold]legaltune plan[/bold] — {c.model.model_name} (architecture {plan.arch.name})")

    t = Table(title="Parameters", show_header=False)
    t.add_row("total (base + LoRA)", f"{p.total:,}")
    t.add_row("trainable", f"{p.trainable:,} ({p.trainable_percent:.4f} %)")
    for name, n in p.per_module.items():
        t.add_row(f"  LoRA on {name}", f"{n:,}")
    if p.trainable_bias:
        t.add_row("  trainable biases", f"{p.trainable_bias:,}")
    formula = "alpha/√r" if c.lora.use_rslora else "alpha/r"
    t.add_row("LoRA scale", f"{plan.lora_scale:.4g} = {formula} (r={c.lora.r}, alpha={c.lora.lora_alpha:g})")
    console.print(t)

    tr = c.training
    s = Table(title="Batch and schedule", show_header=False)
    s.add_row(
        "effective batch",
        f"{plan.effective_batch} = {tr.per_device_train_batch_size} × {tr.gradient_accumulation_steps} GA × {plan.world_size} GPU",
    )
    if plan.train_examples is not None:
        s.add_row("training examples", f"{plan.train_examples:,}")
        s.add_row("steps per epoch", f"{plan.steps_per_epoch:,}")
    if plan.total_steps is not None:
        s.add_row("total steps", f"{plan.total_steps:,}")
        s.add_row("warm-up", f"{plan.warmup_steps:,} steps ({plan.warmup_fraction:.1%})")
    else:
        s.add_row("total steps", "unknown: set data.train_file or pass --examples N")
        s.add_row(
            "warm-up",
            f"{plan.warmup_steps:,} steps" if tr.warmup_ratio is None else f"{tr.warmup_ratio:.1%} of total",
        )
    console.print(s)

    per = "" if plan.world_size == 1 else f" per GPU, {plan.parallel.label}"
    m = Table(
        title=f"Estimated peak GPU memory{per} ({plan.memory.tokens_per_micro_batch:,} tokens per micro-batch)"
    )
    m.add_column("component")
    m.add_column("GiB", justify="right")
    for name, b in plan.memory.components.items():
        m.add_row(name, f"{b / GIB:.2f}")
    m.add_row("[bold]peak allocated[/bold]", f"[bold]{plan.memory.peak_bytes / GIB:.2f}[/bold]")
    m.add_row("+ CUDA context / workspaces", f"{CONTEXT_BYTES / GIB:.2f}")
    if plan.memory.host_offload_bytes:
        m.add_row(
            "host (CPU) pinned memory for offloaded activations"
            + (" (per GPU)" if plan.local_ranks > 1 else ""),
            f"{plan.memory.host_offload_bytes / GIB:.2f}",
        )
    console.print(m)
    if plan.local_ranks > 1 and plan.host_memory:
        console.print(
            f"host memory: {plan.host_memory / GIB:.0f} GiB shared by {plan.local_ranks} GPUs of a machine: "
            f"{plan.host_memory / plan.local_ranks / GIB:.1f} GiB each"
        )
    if plan.gpu_bytes:
        fits = plan.memory.fits(plan.gpu_bytes)
        verdict = "[green]fits[/green]" if fits else "[bold red]does NOT fit[/bold red]"
        console.print(f"GPU {plan.gpu_bytes / GIB:.0f} GiB: {verdict}")
    if plan.speed_choice:
        console.print(f"speed {plan.config.speed.mode}: {plan.speed_choice}")
    if plan.attention_choice:
        console.print(f"speed.offload_attention auto: {plan.attention_choice}")
    for note in plan.memory.notes:
        console.print(f"note: {note}")

    if plan.lints:
        console.print("[bold]Lints[/bold] (seed 003 recommendations and consistency):")
        for lint in plan.lints:
            style = _LEVEL_STYLE[lint.level]
            console.print(
                f"  [{style}]{lint.level:5}[/{style}] {lint.key}: {lint.message}\n        why: {lint.reason}"
            )
    else:
        console.print("lints: none — the config follows seed 003's recommendations")
