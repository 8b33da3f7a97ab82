"""Where a run's time goes before it trains at full speed: seconds per start-up phase.

A user who waits two minutes for the first step wants to know whether it was the imports, the
weights, the data, the compile or the step itself. ``train_summary.json`` gets a ``startup`` entry:
the phases in order (``imports`` is the process's age when training code started, so it counts
``import torch`` / transformers), ``first_step`` from the trainer's start to the end of step 1, and
``compile`` the seconds PyTorch's own compile timers recorded (dynamo tracing and inductor), which
are part of ``first_step`` and of later steps that recompiled.
"""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback


def _process_age_s() -> float | None:
    try:
        import psutil

        return max(0.0, time.time() - psutil.Process().create_time())
    except (ImportError, OSError):
        return None


def compile_seconds() -> dict[str, float]:
    """PyTorch's compile timers summed per timed function, the largest first (empty when nothing was
    compiled or the timers moved)."""
    try:
        from torch._dynamo.utils import compilation_time_metrics
    except ImportError:
        return {}
    sums = {name: round(sum(values), 2) for name, values in compilation_time_metrics.items() if values}
    return dict(sorted(((k, v) for k, v in sums.items() if v >= 0.05), key=lambda kv: -kv[1]))


class StartupClock(TrainerCallback):
    """Marks phases with :meth:`mark`; as a callback it times the trainer's start to step 1."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        age = _process_age_s()
        if age is not None:
            self.phases["imports"] = round(age, 2)
        self._last = time.perf_counter()
        self._train_begin: float | None = None

    def mark(self, phase: str) -> None:
        """Close ``phase``: the seconds since the previous mark."""
        now = time.perf_counter()
        self.phases[phase] = round(self.phases.get(phase, 0.0) + now - self._last, 2)
        self._last = now

    def on_train_begin(self, args, state, control, **kw):
        self.mark("trainer_setup")
        self._train_begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if self._train_begin is not None and "first_step" not in self.phases:
            self.phases["first_step"] = round(time.perf_counter() - self._train_begin, 2)

    def to_dict(self) -> dict[str, Any]:
        compile_timers = compile_seconds()
        total = compile_timers.get("_compile.compile_inner")
        return {
            "phases_s": dict(self.phases),
            "compile_s": total,
            "compile_timers_s": dict(list(compile_timers.items())[:12]),
        }

    def summary(self) -> str:
        parts = [f"{name.replace('_', ' ')} {s:.1f} s" for name, s in self.phases.items()]
        d = self.to_dict()
        if d["compile_s"]:
            parts.append(f"(compile {d['compile_s']:.1f} s of it)")
        return "start-up: " + ", ".join(parts)


__all__ = ["StartupClock", "compile_seconds"]
