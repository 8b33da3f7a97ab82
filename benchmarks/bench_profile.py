"""One profiled training step: where the GPU time goes, by kernel kind, and what the CPU waited on.

``train_step.py --profile DIR`` runs one extra step per shape under ``torch.profiler`` after the
timed ones and writes ``DIR/<row>_<seq>x<batch>.txt``: wall time, GPU busy time (union of kernel
and copy intervals, so idle = the GPU waiting for the CPU or for a copy), time per kernel kind and
per stream, the top kernels, and the CUDA runtime calls that can stall the CPU (host allocation,
synchronisation). Rows then compare kernel by kernel: the question it answers is which part of a
step one engine spends more time on than another.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

# Kernel kinds, first match wins (lower-case substrings of the kernel name).
KINDS = (
    ("copy", ("memcpy", "memset")),
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn")),
    ("gemm", ("gemm", "nvjet", "xmma", "cutlass", "cublas", "matmul", "splitk")),
    ("nf4", ("dequantize", "kdequant", "4bit")),
    ("reduce", ("reduce_kernel",)),
    ("elementwise", ("at::native",)),  # PyTorch's own kernels: pointwise, cat, copies
    ("triton", ("triton_", "_kernel")),  # inductor's triton_* and Liger's *_kernel
)
STALL_CALLS = (
    "cudaHostAlloc",
    "cudaMallocHost",
    "cudaMalloc",
    "cudaFree",
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cudaStreamWaitEvent",
    "cudaMemcpyAsync",
)


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, needles in KINDS:
        if any(n in low for n in needles):
            return kind
    return "other"


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def _largest_gaps(events: Any, count: int = 8) -> list[tuple[float, str, str]]:
    """The longest stretches (us) with no kernel on the stream that runs the most kernels."""
    from torch.autograd import DeviceType

    per_stream: dict[int, list[Any]] = defaultdict(list)
    for evt in events:
        if evt.device_type == DeviceType.CUDA and evt.time_range.end > evt.time_range.start:
            per_stream[evt.device_resource_id].append(evt)
    if not per_stream:
        return []
    kernels = sorted(max(per_stream.values(), key=len), key=lambda e: e.time_range.start)
    gaps = [
        (b.time_range.start - a.time_range.end, a.name, b.name)
        for a, b in zip(kernels, kernels[1:], strict=False)
        if b.time_range.start > a.time_range.end
    ]
    return sorted(gaps, reverse=True)[:count]


def summarize(events: Any, wall_s: float, title: str) -> str:
    """Text summary of the profiler's events (FunctionEvents) of one step."""
    from torch.autograd import DeviceType

    by_kind: dict[str, float] = defaultdict(float)
    by_stream: dict[int, float] = defaultdict(float)
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    calls: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    intervals: list[tuple[float, float]] = []
    for evt in events:
        if evt.device_type == DeviceType.CUDA:
            start, end = evt.time_range.start, evt.time_range.end
            if end <= start:
                continue
            dur = end - start
            intervals.append((start, end))
            by_kind[kind_of(evt.name)] += dur
            by_stream[evt.device_resource_id] += dur
            by_name[evt.name][0] += dur
            by_name[evt.name][1] += 1
        elif evt.name in STALL_CALLS:
            calls[evt.name][0] += evt.time_range.end - evt.time_range.start
            calls[evt.name][1] += 1
    busy_ms = _union_us(intervals) / 1e3
    gaps = _largest_gaps(events)
    wall_ms = wall_s * 1e3
    lines = [
        f"== {title}",
        f"wall {wall_ms:.1f} ms   GPU busy {busy_ms:.1f} ms   idle {wall_ms - busy_ms:.1f} ms",
    ]
    lines.append("by kind (ms): " + ", ".join(f"{k} {v / 1e3:.1f}" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])))  # fmt: skip
    lines.append("by stream (ms): " + ", ".join(f"{s}: {v / 1e3:.1f}" for s, v in sorted(by_stream.items())))
    lines.append("runtime calls (count, ms): " + ", ".join(f"{n} {c[1]}x {c[0] / 1e3:.1f}" for n, c in sorted(calls.items())))  # fmt: skip
    lines.append("largest idle gaps on the busiest stream (ms, kernel before -> kernel after):")
    lines += [f"  {gap / 1e3:7.2f}  {before[:60]} -> {after[:60]}" for gap, before, after in gaps]
    lines.append("top kernels (ms, count, kind):")
    for name, (dur, count) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:25]:
        lines.append(f"  {dur / 1e3:8.2f} {count:5d} {kind_of(name):11s} {name[:110]}")
    return "\n".join(lines) + "\n"


def _profiled(step: Any, sync: Any, with_stack: bool) -> tuple[Any, float]:
    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=with_stack) as prof:
        t0 = time.perf_counter()
        step()
        sync()
        wall = time.perf_counter() - t0
    return prof, wall


def _gaps(prof: Any, out: Path) -> str:
    from bench_gaps import gap_report

    trace = out.with_suffix(".trace.json")
    try:
        prof.export_chrome_trace(str(trace))
        return gap_report(trace)
    finally:
        trace.unlink(missing_ok=True)  # hundreds of MB: only the summary comes back


def profile_step(step: Any, sync: Any, out: Path, title: str) -> str:
    """Profile ``step()`` twice and write and return the summary: once with ops only (the kernel
    summary and the idle-gap split, CPU at close to its real speed), once with Python tracing (which
    slows the CPU, so it over-counts CPU-late gaps, but names the Python functions behind them)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    prof, wall = _profiled(step, sync, with_stack=False)
    text = summarize(prof.events(), wall, title) + _gaps(prof, out)
    prof, wall = _profiled(step, sync, with_stack=True)
    text += f"-- again with Python tracing (wall {wall * 1e3:.1f} ms; the CPU is slower than untraced):\n"
    text += _gaps(prof, out)
    out.write_text(text)
    return text
