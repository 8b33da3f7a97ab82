#!/usr/bin/env python3
"""Benchmark one LoRA/QLoRA training step: legaltune's modes side by side with transformers + PEFT,
Liger-Kernel and Unsloth, on a Llama-3.1-8B-shaped model with random weights (issue #6).

One command runs every row and writes a table to stdout and JSON to ``--out``::

    PYTHONPATH=src python3 benchmarks/train_step.py --qlora     # H100: all 14 rows, ≤ --budget-s 540
    PYTHONPATH=src python3 benchmarks/train_step.py --quick     # CPU smoke test, tiny model (fp32)

Each row (engine x checkpointing mode x bf16/4-bit) runs in its own subprocess, so GPU memory,
allocator state and any class patching (Unsloth patches transformers when imported, Liger patches
the Llama module) never leak from one row into the next. A child loads the model once, runs every
shape in it, and prints one JSON line per shape; the parent never touches the GPU.

Step = forward + backward + AdamW step + zero_grad, on random token ids with labels = input ids.
Per shape: ``--warmup`` untimed steps, then ``--steps`` timed ones, each timed between two CUDA
synchronisations; tokens/s is the median over the timed steps. Peak memory is
``torch.cuda.max_memory_allocated`` over the warm-up and timed steps of that shape: the counter is
reset after the model, adapters and optimizer exist (so the peak includes the weights, which are
still allocated, and the optimizer states, which the first step creates).

MFU counts model FLOPs, the same for every row so that rows compare: a LoRA step costs 2 x the
forward FLOPs (forward + the input-gradient half of backward; frozen weights get no weight
gradient), whether or not a row recomputes activations (recomputation is extra work the hardware
does, not useful work; with full recomputation the hardware does ~3 x forward). Forward FLOPs per
token = 2 x (non-embedding parameters, the output head included) + 2 x layers x seq x d_attn (QK^T
and AV cost 2 x 2 x layers x seq x d_attn; the causal mask halves it). LoRA adapter FLOPs (0.5 % at
r=16) are left out. Llama-3.1-8B: 31.1 GFLOP/token at seq 2048, 34.3 at 8192.

While a row measures, the next row's process is already started and imports its libraries (CPU
only; it waits for the parent's "go" before anything touches the GPU; not for Unsloth, whose
import creates a CUDA context): that hides the seconds of import per row (``prestarted``).

Unsloth and the 4-bit rows load from a local directory (Unsloth cannot take an in-memory model;
bitsandbytes quantizes on load): a background process writes the random model there once, on the
CPU, while the first bf16 rows run (rows that overlapped it say ``concurrent_model_save``).
Rows run in ``ROWS`` order, bf16 first; rows not started within ``--budget-s`` are reported as
skipped, and the JSON is rewritten after every row, so a run stopped early keeps what it measured.

Adding a row is one line in ``ROWS``: a name, a setup function (``Ctx`` in, trainable PEFT model
out), and the checkpointing mode legaltune's plan should model for it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shlex
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Nothing heavy at module level: an Unsloth child must import unsloth before torch/transformers.
# benchmarks/ is not a package: its modules import each other by name, also when this file is
# loaded by path (the tests) rather than run as a script (its directory is on sys.path then).
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_child import child_main  # noqa: E402
from bench_model import compute_dtype_name, model_dir_ready, plan_arch, saver_main  # noqa: E402
from bench_processes import Child, Saver, _kill_group, start_saver  # noqa: E402
from bench_report import (  # noqa: E402
    _fmt,
    _versions,
    add_ratios,
    flops_per_token,
    note_device,
    plan_fields,
    print_phases,
    print_table,
    write_json,
)
from bench_rows import (  # noqa: E402
    ROWS,
    Ctx,  # noqa: F401  (re-exported for tests/test_benchmark_harness.py)
    expand_variants,
    needs_model_dir,
    parse_shapes,
    split_variant,
)
from bench_settings import (  # noqa: E402
    ATTN,
    DEFAULT_ARCH,
    DEFAULT_BUDGET_S,
    DEFAULT_SHAPES,
    FAILED,  # noqa: F401  (re-exported for tests/test_benchmark_harness.py)
    LORA_ALPHA,
    LORA_R,
    MFU_DEFINITION,
    MIN_ROW_S,
    PEAK_DEFINITION,
    QUICK_ARCH,
    QUICK_SHAPES,
    REPO,
    SEVEN_PROJECTIONS,
)

# --------------------------------------------------------------------------------------------
# Parent: run the rows, compare with the plan, report
# --------------------------------------------------------------------------------------------


def gpu_present() -> bool:
    """An NVIDIA driver and a visible device (what torch.cuda.is_available() will say, without torch)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def default_out() -> Path:
    out = os.environ.get("OUT")
    return Path(out) / "train_step.json" if out else REPO / "benchmarks" / "results" / "train_step.json"


def parent_main(args: argparse.Namespace) -> int:
    t_start = time.monotonic()
    arch = plan_arch(args.arch, args.layers)
    shapes = parse_shapes(args.shapes)
    variants = expand_variants(args.rows, args.qlora, args.only_qlora)
    out_path = Path(args.out) if args.out else default_out()
    out_path.parent.mkdir(parents=True, exist_ok=True)

    # The parent does not import torch (seconds per run, the smoke test's budget); it only guesses
    # whether the children will have a GPU. Records carry the device and dtype the child really used.
    cuda = gpu_present()
    meta: dict[str, Any] = {
        "benchmark": "train_step",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(sys.orig_argv),
        "cwd": os.getcwd(),
        "host": platform.node(),
        "gpu": None,
        "gpu_memory_gib": None,
        "cuda": None,
        "versions": _versions(),
        "env": {k: os.environ.get(k) for k in ("PYTORCH_CUDA_ALLOC_CONF", "CUDA_VISIBLE_DEVICES")},
        "settings": {
            "arch": args.arch,
            "layers": arch.layers,
            "shapes": [f"{s}x{b}" for s, b in shapes],
            "warmup_steps": args.warmup,
            "timed_steps": args.steps,
            "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "dropout": 0.0, "targets": list(SEVEN_PROJECTIONS)},
            "optimizer": "torch.optim.AdamW(lr 2e-4, wd 0.01), fused=True on CUDA",
            "attn_implementation": ATTN,
            "dtype": compute_dtype_name(cuda),  # corrected from the children's records at the end
            "peak_tflops": args.peak_tflops,
            "flops_per_token": {f"{s}": flops_per_token(arch, s) for s in sorted({s for s, _ in shapes})},
            "peak_memory": PEAK_DEFINITION,
            "mfu": MFU_DEFINITION,
            "plan_error": "(plan - measured) / measured x 100; target within ±15 %",
            "budget_s": args.budget_s,
            "jobs": args.jobs,
        },
        "rows_requested": variants,
    }
    print(f"train_step: {args.arch} ({arch.layers} layers), shapes {args.shapes}, {len(variants)} rows")
    print(f"rows: {', '.join(variants)}")
    print(f"JSON: {out_path}", flush=True)

    saver: Saver | None = None
    dir_variants = [v for v in variants if needs_model_dir(v)]
    possible = any(
        (split_variant(v)[1] and importlib.util.find_spec("bitsandbytes") is not None)
        or (ROWS[split_variant(v)[0]].from_dir and importlib.util.find_spec("unsloth") is not None)
        for v in dir_variants
    )
    if cuda and possible:
        if args.model_dir is None:
            tag = f"{args.arch}-L{arch.layers}"
            args.model_dir = Path(tempfile.gettempdir()) / "legaltune-bench" / tag
        if not model_dir_ready(Path(args.model_dir), args.arch, arch.layers):
            # Removed now, not by the saver: a child must never find a stale COMPLETE marker.
            shutil.rmtree(args.model_dir, ignore_errors=True)
            saver = start_saver(args)
    meta["model_dir"] = str(args.model_dir) if args.model_dir else None

    scratch = tempfile.mkdtemp(prefix="legaltune-bench-run-")  # children's cwd: Unsloth writes caches there
    results: dict[str, list[dict[str, Any]]] = {}
    walls: dict[str, float] = {}
    lock = threading.Lock()

    def finish(
        variant: str, records: list[dict[str, Any]], problem: str, wall: float, span: tuple[float, float]
    ) -> None:
        by_shape = {(r["seq"], r["batch"]): r for r in records}
        rows = []
        # --find-max-seq: one record per row, at the sequence length it found
        row_shapes = list(by_shape) if args.find_max_seq and records else shapes
        for seq, batch in row_shapes:
            rec = by_shape.get((seq, batch))
            if rec is None:  # the child died or was stopped before this shape
                status, _, reason = problem.partition(": ")
                rec = {"variant": variant, "seq": seq, "batch": batch, "tokens_per_step": seq * batch}
                rec.update(status=status or "error", reason=reason or "no result from the child")
            base, qlora = split_variant(variant)
            rec.update(
                row=base, qlora=qlora, what=ROWS[base].what, row_wall_s=wall, oom=rec["status"] == "oom"
            )
            dtype = rec.get("dtype") or compute_dtype_name(cuda)
            compute_bytes = 4 if dtype == "float32" else 2
            layers = rec.get("checkpoint_layers")  # a partial policy (legaltune-auto) says what it chose
            rec.update(
                plan_fields(arch, variant, seq, batch, rec.get("peak_alloc_gib"), compute_bytes, layers)
            )
            rec["flops_per_token"] = flops_per_token(arch, seq)
            tok = rec.get("tokens_per_s")
            on_gpu = rec.get("device") == "cuda"
            rec["mfu"] = tok * rec["flops_per_token"] / (args.peak_tflops * 1e12) if tok and on_gpu else None
            rec["concurrent_model_save"] = bool(saver and saver.running_during(*span))
            rows.append(rec)
        with lock:
            results[variant], walls[variant] = rows, wall
            ordered = [r for v in variants if v in results for r in results[v]]
            note_device(meta, ordered)
            add_ratios(ordered)
            write_json(out_path, meta, ordered, time.monotonic() - t_start)
            done = len(results)
        summary = " | ".join(
            f"{r['seq']}x{r['batch']}: "
            + (
                f"{r['tokens_per_s']:,.0f} tok/s, {_fmt(r.get('peak_alloc_gib'), '.1f')} GiB"
                if r.get("status") == "ok"
                else r.get("status", "?")
            )
            for r in rows
        )
        print(f"[{done}/{len(variants)}] {variant}: {wall:.1f} s  ({summary})", flush=True)

    def run_one(variant: str, child: Child | None = None, next_variant: str | None = None) -> Child | None:
        """Run ``variant`` (in ``child`` if it was prestarted); prestart ``next_variant`` meanwhile."""
        remaining = args.budget_s - (time.monotonic() - t_start)
        start = time.monotonic()
        if remaining < MIN_ROW_S:
            if child is not None:
                child.cancel()
            problem = (
                f"skipped: time budget spent (--budget-s {args.budget_s:.0f}); run it with --rows {variant}"
            )
            finish(variant, [], problem, 0.0, (start, start))
            return None
        prestarted = child is not None  # its imports ran during the previous row: not in row_wall_s
        if child is None:
            child = Child(variant, args, scratch, prestart=False, deadline=time.time() + remaining)
        child.go(time.time() + remaining)
        following = None
        if next_variant is not None and ROWS[split_variant(next_variant)[0]].prestart:
            following = Child(next_variant, args, scratch, prestart=True)
        records, problem = child.wait(remaining)
        end = time.monotonic()
        for rec in records:
            rec["prestarted"] = prestarted
        finish(variant, records, problem, end - start, (start, end))
        return following

    following: Child | None = None
    try:
        if args.jobs > 1:
            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                list(pool.map(run_one, variants))
        else:
            for i, variant in enumerate(variants):
                after = variants[i + 1] if i + 1 < len(variants) else None
                following = run_one(variant, following, after)
    finally:
        if following is not None:
            following.cancel()
        if saver is not None and saver.proc.poll() is None:
            _kill_group(saver.proc)  # no row needs it any more; an unfinished directory is redone next time
        shutil.rmtree(scratch, ignore_errors=True)
        if args.clean_model_dir and args.model_dir:
            shutil.rmtree(args.model_dir, ignore_errors=True)

    ordered = [r for v in variants for r in results.get(v, [])]
    note_device(meta, ordered)
    add_ratios(ordered)
    total = time.monotonic() - t_start
    write_json(out_path, meta, ordered, total)
    print_table(ordered, walls)
    print_phases(ordered)
    print(f"total {total:.0f} s; JSON written to {out_path}")
    return 0


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="LoRA/QLoRA train-step benchmark: legaltune vs transformers+PEFT, Liger, Unsloth.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--rows", help=f"comma-separated rows (default: all): {', '.join(ROWS)}; <row>+qlora too"
    )
    parser.add_argument("--qlora", action="store_true", help="also run the 4-bit (NF4) variant of each row")
    parser.add_argument("--only-qlora", action="store_true", help="run only the 4-bit variants of the rows")
    parser.add_argument(
        "--arch", help=f"shipped architecture (default {DEFAULT_ARCH}; --quick: {QUICK_ARCH})"
    )
    parser.add_argument("--layers", type=int, help="override the number of decoder layers (smoke tests)")
    parser.add_argument(
        "--shapes", help=f"SEQxBATCH list (default {DEFAULT_SHAPES}; --quick: {QUICK_SHAPES})"
    )
    parser.add_argument("--warmup", type=int, help="untimed steps per shape (default 2; --quick: 1)")
    parser.add_argument("--steps", type=int, help="timed steps per shape (default 5; --quick: 2)")
    parser.add_argument(
        "--peak-tflops", type=float, default=798.0, help="peak bf16 TFLOP/s for MFU (H100 here)"
    )
    parser.add_argument("--out", help="JSON output (default: $OUT/train_step.json, else benchmarks/results/)")
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: tiny arch, 1 + 2 steps, 64x2")
    parser.add_argument(
        "--budget-s", type=float, default=DEFAULT_BUDGET_S, help="rows not started by then are skipped"
    )
    parser.add_argument("--jobs", type=int, default=1, help="rows at a time (--quick only: parallel timings mean nothing)")  # fmt: skip
    parser.add_argument(
        "--model-dir", type=Path, help="where the random model is saved for Unsloth/4-bit rows"
    )
    parser.add_argument("--clean-model-dir", action="store_true", help="delete the saved model at the end")
    parser.add_argument(
        "--profile",
        help="after the timed steps, profile one more step per shape; summaries go to this folder",
    )
    parser.add_argument(
        "--sync-sites",
        action="store_true",
        help="after the timed steps, run one more step per shape listing where the host waited for the GPU",
    )
    parser.add_argument(
        "--cprofile",
        help="after the timed steps, three more steps per shape under cProfile; summaries go here",
    )
    parser.add_argument("--list-rows", action="store_true", help="print the rows and exit")
    parser.add_argument(
        "--find-max-seq",
        type=int,
        metavar="LIMIT",
        help="instead of timing shapes: the longest sequence (batch 1, up to LIMIT) each row can train",
    )
    # Internal: one row in a child process / the background saver.
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--save-model", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=float("inf"), help=argparse.SUPPRESS)
    parser.add_argument("--wait-go", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.jobs < 1 or (args.jobs > 1 and not args.quick):
        parser.error("--jobs > 1 only with --quick: rows sharing a GPU or CPU would time each other")
    args.arch = args.arch or (QUICK_ARCH if args.quick else DEFAULT_ARCH)
    args.shapes = args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.steps = args.steps if args.steps is not None else (2 if args.quick else 5)
    if args.steps < 1 or args.warmup < 0 or (args.layers is not None and args.layers < 1):
        parser.error("--steps must be ≥ 1, --warmup ≥ 0, --layers ≥ 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_rows:
        for name, row in ROWS.items():
            print(f"{name:<22} {row.what}")
        return 0
    if args.save_model:
        return saver_main(args)
    if args.child:
        return child_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
