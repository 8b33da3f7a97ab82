"""Where the time of one FP8 projection goes: each part of forward + input gradient, on the GPU.

The end-to-end FP8 step gains less than the FP8 GEMM alone (1.92× at 8,192 × 4,096 × 14,336, but
1.23× for forward + input gradient with the quantizations, H200 2026-12-02). This times each part
separately at Llama-3.1-8B's projection shapes, medians of CUDA-event timings:

- bf16 ``x Wᵀ`` and ``g W`` (the reference);
- the per-token quantization of ``x`` and of ``g · s_w`` (compiled and eager);
- the FP8 forward GEMM, the transient ``W8ᵀ`` copy, and the input-gradient GEMM with and without
  fast accumulation.

    python3 benchmarks/fp8_parts.py --out $OUT/fp8_parts.json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

import torch

from legaltune.speed import fp8
from legaltune.speed.fp8_rows import quantize_rows_triton

SHAPES = {"q_proj": (4096, 4096), "gate_proj": (4096, 14336), "down_proj": (14336, 4096)}


def _time_ms(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _back_to_back_ms(fn, reps: int) -> float:
    """GPU time per call with the queue kept full (``reps`` calls between two events): the kernel's
    own time where the GPU is the slower side, as inside a training step."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def warps_sweep(tokens: int, reps: int) -> dict[str, dict[str, float]]:
    """The Triton row quantization at the widths a Llama-3.1-8B layer quantizes, by ``num_warps``,
    against inductor's kernel, back to back (ms per call)."""
    out: dict[str, dict[str, float]] = {}
    for cols, with_scale in ((1024, True), (4096, False), (4096, True), (14336, False), (14336, True)):
        t = torch.randn(tokens, cols, device="cuda", dtype=torch.bfloat16)
        cs = torch.rand(cols, device="cuda") if with_scale else None
        row = {"compiled": _back_to_back_ms(functools.partial(fp8.quantize_activation, t, cs), reps)}
        for warps in (2, 4, 8, 16):
            call = functools.partial(quantize_rows_triton, t, cs, num_warps=warps)
            row[f"warps_{warps}"] = _back_to_back_ms(call, reps)
        out[f"{tokens}x{cols}{'+cs' if with_scale else ''}"] = {k: round(v, 4) for k, v in row.items()}
    return out


def measure(tokens: int, d_in: int, d_out: int, reps: int) -> dict[str, float]:
    dev, bf16 = "cuda", torch.bfloat16
    x = torch.randn(tokens, d_in, device=dev, dtype=bf16)
    g = torch.randn(tokens, d_out, device=dev, dtype=bf16) * 1e-3
    w = torch.randn(d_out, d_in, device=dev, dtype=bf16) * 0.02
    w8, s_w = fp8.quantize_weight(w)
    x8, sx = fp8.quantize_activation(x)
    g8, sg = fp8.quantize_activation(g, s_w)
    w8_t = w8.t().contiguous()
    ones = torch.ones(1, d_in, device=dev)

    def grad_gemm(fast: bool, cached: bool):
        b = w8_t if cached else w8.t().contiguous()
        return fp8.scaled_mm(g8, b.t(), sg, ones, bf16, fast_accum=fast)

    parts = {
        "bf16 forward x·Wᵀ": lambda: x @ w.t(),
        "bf16 input grad g·W": lambda: g @ w,
        "quantize x (compiled)": lambda: fp8.quantize_activation(x),
        "quantize g·s_w (compiled)": lambda: fp8.quantize_activation(g, s_w),
        "quantize g·s_w (eager)": lambda: fp8.quantize_rows(g, s_w),
        "quantize x (triton, one read)": lambda: quantize_rows_triton(x),
        "quantize g·s_w (triton, one read)": lambda: quantize_rows_triton(g, s_w),
        "FP8 forward GEMM (fast accum)": lambda: fp8.scaled_mm(
            x8, w8.t(), sx, s_w.view(1, -1), bf16, fast_accum=True
        ),
        "W8ᵀ copy": lambda: w8.t().contiguous(),
        "FP8 grad GEMM, exact accum, W8ᵀ copied": lambda: grad_gemm(False, False),
        "FP8 grad GEMM, exact accum, W8ᵀ cached": lambda: grad_gemm(False, True),
        "FP8 grad GEMM, fast accum, W8ᵀ cached": lambda: grad_gemm(True, True),
        "FP8 forward + input grad as shipped": lambda: (
            fp8.fp8_linear(x, w8, s_w, bf16),
            fp8.fp8_input_grad(g, w8, s_w, bf16),
        ),
    }
    return {name: round(_time_ms(fn, reps), 4) for name, fn in parts.items()}


def triton_mismatches(tokens: int, d_out: int) -> dict[str, float]:
    """How far the Triton row quantization of a gradient is from the eager reference and from the
    compiled kernel: the share of e4m3 bytes and of row scales that differ (0 = bit for bit)."""
    g = torch.randn(tokens, d_out, device="cuda", dtype=torch.bfloat16) * 1e-3
    s_w = torch.rand(d_out, device="cuda") * 0.01
    a8, sa = quantize_rows_triton(g, s_w)
    out = {}
    for name, (b8, sb) in (
        ("eager", fp8.quantize_rows(g, s_w)),
        ("compiled", fp8.quantize_activation(g, s_w)),
    ):
        out[f"bytes_vs_{name}"] = (a8.view(torch.uint8) != b8.view(torch.uint8)).float().mean().item()
        out[f"scales_vs_{name}"] = (sa != sb).float().mean().item()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", help="JSON output")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU with FP8 tensor cores")
    result = {"gpu": torch.cuda.get_device_name(), "tokens": args.tokens, "ms": {}}
    for name, (d_in, d_out) in SHAPES.items():
        ms = measure(args.tokens, d_in, d_out, args.reps)
        result["ms"][name] = ms
        result.setdefault("triton_mismatch", {})[name] = triton_mismatches(args.tokens, d_out)
        print(f"{name} {args.tokens}×{d_in}→{d_out}")
        for part, t in ms.items():
            print(f"  {part:<42} {t:8.3f} ms")
        print(f"  triton vs eager / compiled: {result['triton_mismatch'][name]}")
    result["triton_warps_back_to_back_ms"] = warps_sweep(args.tokens, args.reps)
    for shape, row in result["triton_warps_back_to_back_ms"].items():
        print(f"quantize {shape}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
