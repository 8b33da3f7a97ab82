"""The child process: one row, every shape; timed steps, peak memory, one JSON line per shape."""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# Nothing heavy at module level: an Unsloth child must import unsloth before torch/transformers.
from bench_model import compute_dtype_name
from bench_phases import PhaseClock, cprofile_steps, find_syncs
from bench_rows import ROWS, Ctx, parse_shapes, split_variant
from bench_settings import GIB, LEARNING_RATE, MARK, SEED, WEIGHT_DECAY

# --------------------------------------------------------------------------------------------
# Child: one row, every shape
# --------------------------------------------------------------------------------------------


def _emit(record: dict[str, Any]) -> None:
    print(MARK + json.dumps(record), flush=True)


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def _release(cuda: bool) -> None:
    gc.collect()
    if cuda:
        import torch

        torch.cuda.empty_cache()


def _failure(exc: BaseException, where: str = "") -> tuple[str, str]:
    """(status, reason) of a failed step: Triton and bitsandbytes report running out of memory
    as a RuntimeError, not torch.OutOfMemoryError; those count as OOM too."""
    text = str(exc).strip()
    status = "oom" if "out of memory" in text.lower() else "error"
    return status, f"{where}{type(exc).__name__}: {text[:300]}"


def _offloader(model: Any) -> Any:
    for module in model.modules():
        offloader = module.__dict__.get("_legaltune_offloader")
        if offloader is not None:
            return offloader
    return None


def run_shape(
    model: Any,
    opt: Any,
    seq: int,
    batch: int,
    warmup: int,
    steps: int,
    device: str,
    fused_head: bool = False,
    profile: Path | None = None,
    sync_sites: bool = False,
    cprofile: Path | None = None,
) -> dict[str, Any]:
    """Warm-up + timed steps at one shape; a dict with status ok / oom / error. Timed steps also
        record CPU issue vs GPU time per phase (:mod:`bench_phases`). ``profile``: then one more step
        under the profiler, its summary written there; ``sync_sites``: one more step listing where the
        host synchronised; ``cprofile``: three more steps under cProfile, its summary written there (none
    of these is part of the timings)."""
    import torch

    cuda = device == "cuda"
    gen = torch.Generator(device=device).manual_seed(SEED)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device, generator=gen)
    rec: dict[str, Any] = {"seq": seq, "batch": batch, "tokens_per_step": seq * batch}
    _release(cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    warm: list[float] = []
    timed: list[float] = []
    loss = None
    failure: tuple[str, str] | None = None
    extra = {"fused_lm_head": True} if fused_head else {}

    clock = PhaseClock(cuda)

    def step(timed_step: bool = False) -> torch.Tensor:
        if timed_step:
            clock.start()
        out = model(input_ids=ids, labels=ids, **extra)
        if timed_step:
            clock.mark("forward")
        out.loss.backward()
        if timed_step:
            clock.mark("backward")
        opt.step()
        opt.zero_grad(set_to_none=True)
        if timed_step:
            clock.mark("optimizer")
        # Only the loss leaves: HF's output holds [tokens × vocab] logits, which would otherwise
        # still be alive during the next step's forward and count in its peak.
        return out.loss.detach()

    try:
        for i in range(warmup + steps):
            _sync(cuda)
            t0 = time.perf_counter()
            loss = step(timed_step=i >= warmup)
            _sync(cuda)
            (timed if i >= warmup else warm).append(time.perf_counter() - t0)
        rec["phases"] = clock.summary()
        if cuda and sync_sites:
            rec["sync_sites"] = find_syncs(step)
        if cprofile is not None:
            cprofile_steps(step, lambda: _sync(cuda), cprofile)
        if profile is not None:
            from bench_profile import profile_step

            title = f"{profile.stem}  ({seq}x{batch}, {seq * batch} tokens)"
            print(profile_step(step, lambda: _sync(cuda), profile, title), file=sys.stderr)
    except torch.OutOfMemoryError as exc:
        failure = ("oom", str(exc).strip().splitlines()[0][:300])
    except Exception as exc:  # a broken row must not take the others down
        traceback.print_exc()
        failure = _failure(exc)
    offloader = _offloader(model)
    if offloader is not None:  # what the last step moved to the host and what stayed on the GPU
        rec["offloaded_gib"] = round(offloader.offloaded_bytes / GIB, 3)
        rec["offload_kept_gib"] = round(offloader.kept_bytes / GIB, 3)
        rec["offload_stalls"] = offloader.stalls
    if cuda:
        rec["peak_alloc_gib"] = torch.cuda.max_memory_allocated() / GIB
        rec["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
    opt.zero_grad(set_to_none=True)
    ids = None  # noqa: F841  (frees the batch before the next shape; step() is not called again)
    _release(cuda)
    rec["warmup_s"] = warm
    rec["step_s"] = timed
    if failure is not None:
        rec["status"], rec["reason"] = failure
        return rec
    median = statistics.median(timed)
    rec.update(
        status="ok",
        tokens_per_s=seq * batch / median,
        tokens_per_s_steps=[seq * batch / t for t in timed],
        step_median_s=median,
        loss=float(loss) if loss is not None else None,
    )
    return rec


def find_max_seq(
    model: Any, opt: Any, limit: int, start: int, device: str, fused_head: bool, deadline: float
) -> dict[str, Any]:
    """Longest sequence (batch 1) for which one full step (forward, backward, AdamW) runs: doubling
    from ``start`` until a step fails or ``limit``, then halving the gap twice. Every probe is listed."""
    probes: list[dict[str, Any]] = []

    def fits(seq: int) -> bool:
        rec = run_shape(model, opt, seq, 1, 0, 1, device, fused_head)
        probes.append({k: rec.get(k) for k in ("seq", "status", "peak_alloc_gib", "tokens_per_s", "reason")})
        print(f"  max-seq probe {seq}: {rec['status']}", file=sys.stderr, flush=True)
        return rec["status"] == "ok"

    lo, hi, seq = 0, None, start
    while seq <= limit and time.time() < deadline:
        if not fits(seq):
            hi = seq
            break
        lo, seq = seq, seq * 2
    for _ in range(2):
        if hi is None or time.time() >= deadline:
            break
        mid = (lo + hi) // 2 // 1024 * 1024
        if fits(mid):
            lo = mid
        else:
            hi = mid
    best = next((p for p in probes if p["seq"] == lo), {})
    # Flash/SDPA attention keeps memory linear in tokens: the last two fitting probes give the slope,
    # and the sequence at which the peak would reach the GPU's memory (less 1 GiB of context).
    ok = [p for p in probes if p["status"] == "ok" and p.get("peak_alloc_gib")]
    extrapolated = None
    if len(ok) >= 2 and device == "cuda":
        import torch

        (s1, m1), (s2, m2) = ((p["seq"], p["peak_alloc_gib"]) for p in ok[-2:])
        capacity = torch.cuda.get_device_properties(0).total_memory / 2**30 - 1.0
        if m2 > m1:
            extrapolated = int(s2 + (capacity - m2) * (s2 - s1) / (m2 - m1))
    return {
        "seq": lo,
        "batch": 1,
        "tokens_per_step": lo,
        "status": "ok" if lo else "oom",
        "max_seq": lo,
        "max_seq_first_failure": hi,
        "max_seq_limit": limit,
        "max_seq_extrapolated": extrapolated,
        "max_seq_probes": probes,
        "peak_alloc_gib": best.get("peak_alloc_gib"),
        "tokens_per_s": best.get("tokens_per_s"),
    }


def child_main(args: argparse.Namespace) -> int:
    variant = args.child
    base, qlora = split_variant(variant)
    row = ROWS[base]
    shapes = parse_shapes(args.shapes)

    def emit_all(**fields: Any) -> int:
        for seq, batch in shapes:
            _emit({"variant": variant, "seq": seq, "batch": batch, "tokens_per_step": seq * batch, **fields})
        return 0

    def import_needs() -> str | None:
        for module in row.needs:
            try:
                importlib.import_module(module)
            except Exception as exc:
                return f"import {module} failed: {type(exc).__name__}: {str(exc).strip()[:200]}"
        return None

    # Import the row's own engine first: Unsloth patches transformers/peft on import and has to
    # come before them (this module imports neither at top level for that reason). A prestarted
    # row imports it only once the GPU is its own (Liger's import may create a CUDA context).
    if not args.wait_go and (reason := import_needs()):
        return emit_all(status="skipped", reason=reason)
    import torch

    cuda = torch.cuda.is_available()  # counts devices; creates no CUDA context
    if (qlora or row.from_dir) and not cuda:
        return emit_all(status="skipped", reason="needs a CUDA GPU")
    if qlora and importlib.util.find_spec("bitsandbytes") is None:
        return emit_all(status="skipped", reason="bitsandbytes not installed")
    if args.wait_go:
        # Prestarted: import what the setup needs (CPU only, seconds) while the previous row
        # measures, then wait until the GPU is ours. From here on, a CUDA context may be created.
        for module in ("transformers", "peft", "legaltune.model.lora"):
            importlib.import_module(module)
        from transformers import AutoConfig, AutoModelForCausalLM  # noqa: F401  (resolves lazy modules)

        word, _, deadline = sys.stdin.readline().partition(" ")
        if word.strip() != "go":
            return 0
        args.deadline = float(deadline)
        if reason := import_needs():
            return emit_all(status="skipped", reason=reason)
    device = "cuda" if cuda else "cpu"
    info: dict[str, Any] = {
        "variant": variant,
        "device": device,
        "dtype": compute_dtype_name(cuda),
        "torch_cuda": torch.version.cuda,
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(device_name=props.name, device_total_gib=props.total_memory / GIB)
    else:
        info.update(device_name=platform.processor() or platform.machine(), device_total_gib=None)
    ctx = Ctx(
        variant=variant,
        qlora=qlora,
        arch=args.arch,
        layers=args.layers,
        max_seq=args.find_max_seq or max(seq for seq, _ in shapes),
        device=device,
        dtype=compute_dtype_name(cuda),
        model_dir=Path(args.model_dir) if args.model_dir else None,
        deadline=args.deadline,
        shapes=tuple(shapes),
    )
    torch.manual_seed(SEED)
    t0 = time.perf_counter()
    failure: tuple[str, str] | None = None
    try:
        model = row.setup(ctx)
        model.train()  # from_pretrained returns eval mode, where HF checkpointing is off
    except torch.OutOfMemoryError as exc:
        failure = ("oom", str(exc).strip().splitlines()[0][:300])
    except Exception as exc:
        traceback.print_exc()
        failure = _failure(exc, "setup: ")
    if failure is not None:
        _release(cuda)
        return emit_all(**info, status=failure[0], reason=failure[1])
    _sync(cuda)
    info["load_s"] = time.perf_counter() - t0
    info["model_alloc_gib"] = torch.cuda.memory_allocated() / GIB if cuda else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    info["trainable_params"] = sum(p.numel() for p in trainable)
    if row.speed:  # what the plan should model: the layers legaltune's checkpointing wraps
        from legaltune.speed.offload import checkpointed_layers

        info["checkpoint_layers"] = checkpointed_layers(model)
    # Fused AdamW (one kernel for all LoRA tensors) on CUDA, as optim adamw_torch_fused; CPU: default.
    opt = torch.optim.AdamW(
        trainable, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, fused=True if cuda else None
    )
    if args.find_max_seq:
        found = find_max_seq(
            model,
            opt,
            args.find_max_seq,
            min(16384, max(64, args.find_max_seq // 8)),
            device,
            row.fused_head,
            args.deadline,
        )
        _emit({**info, **found})
        return 0
    for seq, batch in shapes:
        print(f"{seq}x{batch}: {args.warmup} warm-up + {args.steps} timed steps", file=sys.stderr)
        stem = f"{variant.replace('+', '_')}_{seq}x{batch}"
        profile = Path(args.profile) / f"{stem}.txt" if args.profile else None
        cprofile = Path(args.cprofile) / f"{stem}.cprofile.txt" if args.cprofile else None
        if cprofile is not None:
            cprofile.parent.mkdir(parents=True, exist_ok=True)
        _emit(
            {
                **info,
                **run_shape(
                    model,
                    opt,
                    seq,
                    batch,
                    args.warmup,
                    args.steps,
                    device,
                    row.fused_head,
                    profile,
                    args.sync_sites,
                    cprofile,
                ),
            }
        )
    return 0
