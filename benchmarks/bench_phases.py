"""Whether a step is bound by the GPU or by the CPU issuing its work, per phase, without a profiler.

Each timed step records, for its forward, backward and optimizer phases, the CPU time spent issuing
the phase (Python returns as soon as the kernels are queued, unless something synchronises) and
the GPU time between CUDA events recorded at the phase boundaries. CPU issue time close to (or
above) the GPU time means the GPU waited for the CPU in that phase; well below, the GPU was the
limit. The profiler cannot answer this: it slows the CPU side by a third.

:func:`find_syncs` runs one more step with CUDA's sync debug mode on and lists where the host
waited for the device (file:line frames of each synchronising call), because each sync drains the
GPU's queue and the CPU then has to get ahead again.
"""

from __future__ import annotations

import statistics
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

PHASES = ("forward", "backward", "optimizer")


class PhaseClock:
    """``mark(phase)`` after each phase of a step; ``summary()`` gives median CPU/GPU ms per phase."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.steps: list[dict[str, tuple[float, Any, Any]]] = []
        self._t = 0.0
        self._event: Any = None

    def start(self) -> None:
        self.steps.append({})
        self._t = time.perf_counter()
        self._event = self._record()

    def _record(self) -> Any:
        if not self.cuda:
            return None
        import torch

        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def mark(self, phase: str) -> None:
        now, event = time.perf_counter(), self._record()
        self.steps[-1][phase] = (now - self._t, self._event, event)
        self._t, self._event = now, event

    def summary(self, skip: int = 0) -> dict[str, dict[str, float]]:
        """Per phase, median ms over the steps after the first ``skip`` (call after a device sync)."""
        out: dict[str, dict[str, float]] = {}
        for phase in PHASES:
            rows = [s[phase] for s in self.steps[skip:] if phase in s]
            if not rows:
                continue
            cpu = statistics.median(r[0] for r in rows) * 1e3
            out[phase] = {"cpu_ms": round(cpu, 2)}
            if self.cuda:
                out[phase]["gpu_ms"] = round(statistics.median(a.elapsed_time(b) for _, a, b in rows), 2)
        return out


def find_syncs(step: Callable[[], Any], frames: int = 4) -> list[dict[str, Any]]:
    """Run ``step`` once with CUDA sync debug warnings on; the distinct call sites that synchronised
    (innermost ``frames`` Python frames outside torch), with how often each did."""
    import torch

    sites: Counter[tuple[str, ...]] = Counter()

    def show(
        message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        if "synchroniz" not in str(message):
            return
        stack = [
            f
            for f in traceback.extract_stack()[:-1]
            if "/torch/" not in f.filename and "warnings" not in f.filename
        ]
        sites[tuple(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}" for f in stack[-frames:])] += 1

    before = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(before)
    torch.cuda.synchronize()
    return [{"count": n, "frames": list(site)} for site, n in sites.most_common()]


def cprofile_steps(step: Callable[[], Any], sync: Callable[[], None], path: Any, steps: int = 3) -> None:
    """``steps`` more steps under cProfile (what the CPU does per step, by function: the profiler
    slows Python calls, so compare functions with each other, not with the step time); the top
    functions by own and by cumulative time are written to ``path``."""
    import cProfile
    import io
    import pstats

    sync()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step()
    sync()
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    text.write(f"{steps} steps under cProfile\n")
    stats.sort_stats("tottime").print_stats(45)
    stats.sort_stats("cumulative").print_stats(70)
    path.write_text(text.getvalue(), encoding="utf-8")


__all__ = ["PHASES", "PhaseClock", "cprofile_steps", "find_syncs"]
