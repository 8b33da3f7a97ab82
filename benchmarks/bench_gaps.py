"""Why the compute stream sits idle: gap attribution from one profiled step's Chrome trace.

For every idle stretch on the busiest stream, the kernel that ends it was launched by a CUDA
runtime call (matched by correlation id). If that call returned after the stream went idle, the
GPU waited for the CPU (*cpu-late*): we then charge the CPU time of that window to the Python
functions and ops running on the launching thread (self time, innermost frame first). If the work
was queued before the stream went idle, the GPU waited on something else (*queued*): an event on
another stream, usually a copy; we name the last GPU activity on another stream that ended before
the gap did. Synchronising runtime calls are listed with the Python frames around them.
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
CPU_CATS = {"cpu_op", "python_function", "cuda_runtime", "cuda_driver", "user_annotation"}
SYNC_CALLS = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cudaMemcpy",
    "cudaFree",
)
MIN_GAP_US = 20.0


def _self_times(events: list[dict[str, Any]], windows: list[tuple[float, float]]) -> dict[str, float]:
    """Self time (us) of each event name inside the windows; events of one thread, nested by time."""
    if not windows:
        return {}
    windows = sorted(windows)

    def overlap(start: float, end: float) -> float:
        total = 0.0
        for ws, we in windows:  # few hundred windows at most
            if we <= start:
                continue
            if ws >= end:
                break
            total += min(end, we) - max(start, ws)
        return total

    out: dict[str, float] = defaultdict(float)
    stack: list[tuple[float, str, list[tuple[float, float]]]] = []  # (end, name, children)

    def close(item: tuple[float, str, list[tuple[float, float]]], start: float) -> None:
        end, name, children = item
        self_t = overlap(start, end) - sum(overlap(a, b) for a, b in children)
        out[name] += max(self_t, 0.0)

    starts: dict[int, float] = {}
    for evt in sorted(events, key=lambda e: (e["ts"], -e.get("dur", 0))):
        ts, end = evt["ts"], evt["ts"] + evt.get("dur", 0)
        while stack and stack[-1][0] <= ts:
            item = stack.pop()
            close(item, starts.pop(id(item)))
        if stack:
            stack[-1][2].append((ts, end))
        item = (end, evt["name"], [])
        starts[id(item)] = ts
        stack.append(item)
    while stack:
        item = stack.pop()
        close(item, starts.pop(id(item)))
    return out


def _sampled_frames(
    frames: list[dict[str, Any]], windows: list[tuple[float, float]], step_us: float = 10.0
) -> dict[str, float]:
    """Innermost Python frame at every ``step_us`` inside the windows (us per frame name): a
    sampling profile, robust to the tracer's imperfectly nested events."""
    frames = sorted(frames, key=lambda e: e["ts"])
    starts = [e["ts"] for e in frames]
    out: dict[str, float] = defaultdict(float)
    for ws, we in windows:
        t = ws + step_us / 2
        while t < we:
            i = bisect.bisect_right(starts, t) - 1
            for j in range(i, max(i - 5000, -1), -1):  # latest-starting frame that still runs = innermost
                if frames[j]["ts"] + frames[j].get("dur", 0) >= t:
                    out[frames[j]["name"]] += step_us
                    break
            t += step_us
    return out


def _enclosing(events: list[dict[str, Any]], at: float, count: int = 8) -> list[str]:
    """Names of the Python frames around time ``at`` on a thread, innermost first."""
    frames = [
        e for e in events if e["cat"] == "python_function" and e["ts"] <= at <= e["ts"] + e.get("dur", 0)
    ]
    frames.sort(key=lambda e: e["ts"], reverse=True)
    skip = ("torch/nn/modules/module.py", "torch/_dynamo", "torch/autograd/graph.py", "<built-in")
    return [f["name"] for f in frames if not any(s in f["name"] for s in skip)][:count]


def gap_report(trace_path: Path, top: int = 25) -> str:
    """Text: idle time on the busiest stream split into cpu-late and queued, what the CPU ran
    during cpu-late gaps, what queued gaps waited for, and where synchronising calls came from."""
    data = json.loads(trace_path.read_text())
    events = [e for e in data.get("traceEvents", []) if e.get("ph") == "X" and "ts" in e]
    gpu = [e for e in events if e.get("cat") in GPU_CATS]
    cpu = [e for e in events if e.get("cat") in CPU_CATS]
    if not gpu:
        return "gap report: no GPU events in the trace\n"
    by_stream: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for e in gpu:
        by_stream[e.get("args", {}).get("stream", e.get("tid"))].append(e)
    main_stream, main = max(by_stream.items(), key=lambda kv: len(kv[1]))
    main.sort(key=lambda e: e["ts"])
    others = sorted(
        (e for s, evs in by_stream.items() if s != main_stream for e in evs),
        key=lambda e: e["ts"] + e.get("dur", 0),
    )
    by_tid: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for e in cpu:
        by_tid[e["tid"]].append(e)
    other_ends = [e["ts"] + e.get("dur", 0) for e in others]
    launches = {e["args"]["correlation"]: e for e in cpu if e["cat"] in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}  # fmt: skip
    late_us = queued_us = 0.0
    late_windows: dict[Any, list[tuple[float, float]]] = defaultdict(list)
    waited_on: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    late_launchers: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for a, b in zip(main, main[1:], strict=False):
        start, end = a["ts"] + a.get("dur", 0), b["ts"]
        gap = end - start
        if gap < MIN_GAP_US:
            continue
        # The part of the gap before the launch call returned is the CPU's; the rest, the GPU
        # had the work queued and waited on something else.
        launch = launches.get(b.get("args", {}).get("correlation"))
        issued = launch["ts"] + launch.get("dur", 0) if launch is not None else start
        late = max(0.0, min(end, issued) - start)
        if late > 0:
            late_us += late
            late_windows[launch["tid"]].append((start, start + late))
            late_launchers[b["name"][:70]][0] += late
            late_launchers[b["name"][:70]][1] += 1
        if gap - late > 0:
            queued_us += gap - late
            i = bisect.bisect_right(other_ends, end + 2)
            name = others[i - 1]["name"][:60] if i else "(nothing on another stream)"
            waited_on[name][0] += gap - late
            waited_on[name][1] += 1
    lines = [
        f"gap attribution (stream {main_stream}, gaps >= {MIN_GAP_US:.0f} us): cpu-late {late_us / 1e3:.1f} ms, "
        f"queued {queued_us / 1e3:.1f} ms"
    ]
    lines.append("queued gaps: last GPU activity on another stream before the gap ended (ms, count):")
    for name, (t, n) in sorted(waited_on.items(), key=lambda kv: -kv[1][0])[:8]:
        lines.append(f"  {t / 1e3:8.2f} {n:5d}  {name}")
    lines.append("cpu-late gaps: kernel that ended the gap (ms, count):")
    for name, (t, n) in sorted(late_launchers.items(), key=lambda kv: -kv[1][0])[:10]:
        lines.append(f"  {t / 1e3:8.2f} {n:5d}  {name}")
    lines.append(
        f"cpu-late gaps: CPU self time by op / runtime call on the launching thread (top {top}, ms):"
    )
    totals: dict[str, float] = defaultdict(float)
    sampled: dict[str, float] = defaultdict(float)
    for tid, windows in late_windows.items():
        thread = [e for e in by_tid[tid] if e["cat"] != "python_function"]
        for name, t in _self_times(thread, windows).items():
            totals[name] += t
        frames = [e for e in by_tid[tid] if e["cat"] == "python_function"]
        for name, t in _sampled_frames(frames, windows).items():
            sampled[name] += t
    for name, t in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {t / 1e3:8.2f}  {name[:120]}")
    if sampled:
        lines.append(f"cpu-late gaps: innermost Python frame, sampled every 10 us (top {top}, ms):")
        for name, t in sorted(sampled.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"  {t / 1e3:8.2f}  {name[:120]}")
    syncs = [e for e in cpu if e["cat"] == "cuda_runtime" and e["name"] in SYNC_CALLS]
    lines.append(f"synchronising runtime calls: {len(syncs)} (count, ms, Python frames around them)")
    grouped: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for e in syncs:
        key = f"{e['name']}: " + " <- ".join(_enclosing(by_tid[e["tid"]], e["ts"]))
        grouped[key][0] += 1
        grouped[key][1] += e.get("dur", 0)
    for key, (n, t) in sorted(grouped.items(), key=lambda kv: -kv[1][1])[:10]:
        lines.append(f"  {n:4d}x {t / 1e3:7.2f}  {key[:400]}")
    return "\n".join(lines) + "\n"


__all__ = ["gap_report"]
