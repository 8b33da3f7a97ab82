"""Reporting: model FLOPs, legaltune's plan estimate per row, versions, the table and the JSON."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Nothing heavy at module level: an Unsloth child must import unsloth before torch/transformers.
if TYPE_CHECKING:
    from legaltune.model.arch import Arch

from bench_plan import row_estimate
from bench_rows import ROWS, split_variant
from bench_settings import GIB, PLAN_TARGET_PCT, QLORA_SUFFIX

# --------------------------------------------------------------------------------------------
# Parent side: compare with the plan, report
# --------------------------------------------------------------------------------------------


def flops_per_token(arch: Arch, seq: int) -> float:
    """Model FLOPs of one LoRA training step per token: 2 × forward (see the module docstring)."""
    from legaltune.plan.params import base_param_count

    embed = arch.vocab * arch.hidden
    # The input embedding is a lookup; the output head is a matmul even when tied to it.
    non_embedding = base_param_count(arch) - embed + (embed if arch.tie_embeddings else 0)
    attention = 2 * arch.layers * seq * arch.heads * arch.head_dim  # causal half of 2·2·L·s·d
    return 2.0 * (2 * non_embedding + attention)


def plan_fields(
    arch: Arch,
    variant: str,
    seq: int,
    batch: int,
    measured_gib: float | None,
    compute_bytes: int,
    checkpoint_layers: int | None = None,
) -> dict[str, Any]:
    """legaltune's plan estimate of the peak for this row and shape, and its error against the measurement."""
    base, qlora = split_variant(variant)
    row = ROWS[base]
    est = row_estimate(arch, row, qlora, seq, batch, compute_bytes, checkpoint_layers)
    gap = row.plan_gap_qlora if qlora and row.plan_gap_qlora is not None else row.plan_gap
    plan_gib = est.peak_bytes / GIB
    # Positive error = the plan overestimates the measured peak.
    error = (plan_gib - measured_gib) / measured_gib * 100 if measured_gib else None
    return {
        "plan_peak_gib": plan_gib,
        "plan_components_gib": {k: v / GIB for k, v in est.components.items()},
        "plan_host_offload_gib": est.host_offload_bytes / GIB,
        "plan_checkpointing": row.checkpointing,
        "plan_checkpoint_layers": checkpoint_layers,
        "plan_error_pct": error,
        "plan_within_target": abs(error) <= PLAN_TARGET_PCT if error is not None else None,
        "plan_applies": not gap,
        "plan_note": gap or None,
    }


def _versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata (no imports: Unsloth's import patches things)."""
    names = {
        "torch": "torch",
        "transformers": "transformers",
        "peft": "peft",
        "accelerate": "accelerate",
        "liger_kernel": "liger-kernel",
        "unsloth": "unsloth",
        "unsloth_zoo": "unsloth_zoo",
        "bitsandbytes": "bitsandbytes",
        "triton": "triton",
        "legaltune": "legaltune",
    }
    found: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in names.items():
        try:
            found[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[key] = None
    return found


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Speed of each row against unsloth (or hf when unsloth has no number) of the same precision and shape."""
    ok = {(r["variant"], r["seq"], r["batch"]): r["tokens_per_s"] for r in rows if r.get("status") == "ok"}
    for r in rows:
        _, qlora = split_variant(r["variant"])
        suffix = QLORA_SUFFIX if qlora else ""
        for base in ("unsloth", "hf"):
            ref = ok.get((base + suffix, r["seq"], r["batch"]))
            if ref:
                r["ratio_vs"] = base + suffix
                r["ratio"] = r["tokens_per_s"] / ref if r.get("status") == "ok" else None
                break
        else:
            r["ratio_vs"], r["ratio"] = None, None


def print_table(rows: list[dict[str, Any]], walls: dict[str, float]) -> None:
    head = (
        f"{'row':<28} {'shape':>7} {'tok/s':>9} {'peak GiB':>9} {'MFU %':>6} {'plan GiB':>9} "
        f"{'err %':>7} {'ratio':>15} {'row s':>6}"
    )
    print()
    print(head)
    print("-" * len(head))
    flagged = False
    for r in rows:
        shape = f"{r['seq']}x{r['batch']}"
        wall = _fmt(walls.get(r["variant"]), ".0f")
        mark = "" if r.get("plan_applies", True) else "*"
        flagged = flagged or bool(mark)
        plan = _fmt(r.get("plan_peak_gib"), ".1f") + mark
        if r.get("status") != "ok":
            peak = _fmt(r.get("peak_alloc_gib"), ".1f")
            note = f"{r.get('status', '?').upper()}: {r.get('reason', '')}"[:60]
            print(f"{r['variant']:<28} {shape:>7} {'-':>9} {peak:>9} {'-':>6} {plan:>9} {'':>7} {note}")
            continue
        mfu = _fmt(r["mfu"] * 100 if r.get("mfu") is not None else None, ".1f")
        err = _fmt(r.get("plan_error_pct"), "+.1f")
        ratio = f"{r['ratio']:.2f}x {r['ratio_vs']}" if r.get("ratio") is not None else "-"
        print(
            f"{r['variant']:<28} {shape:>7} {r['tokens_per_s']:>9,.0f} {_fmt(r.get('peak_alloc_gib'), '.2f'):>9} "
            f"{mfu:>6} {plan:>9} {err:>7} {ratio:>15} {wall:>6}"
        )
    print()
    print("peak = max allocated over warm-up + timed steps (after load); err = (plan - measured) / measured;")
    print(
        f"MFU = model FLOPs (2 x forward for every row) / peak; plan target: within ±{PLAN_TARGET_PCT:.0f} %."
    )
    if flagged:
        print("* the plan's memory model does not describe this row yet (see plan_note in the JSON).")


def print_phases(rows: list[dict[str, Any]]) -> None:
    """CPU issue vs GPU time per phase (median ms of the timed steps), and where hosts synchronised."""
    timed = [r for r in rows if r.get("status") == "ok" and r.get("phases")]
    if not timed:
        return
    print("phases, median ms — CPU issuing / GPU (CPU near or above GPU: the GPU waited for the CPU):")
    for r in timed:
        cells = "  ".join(
            f"{phase} {t['cpu_ms']:.1f}/{t.get('gpu_ms', float('nan')):.1f}"
            for phase, t in r["phases"].items()
        )
        print(f"  {r['variant']:<28} {r['seq']}x{r['batch']:<4} {cells}")
        for site in r.get("sync_sites", []):
            print(f"      sync x{site['count']}: {' <- '.join(reversed(site['frames']))}")
    print()


def note_device(meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """GPU name, CUDA version and dtype as the first child that ran reported them."""
    ran = next((r for r in rows if r.get("device")), None)
    if ran is not None:
        meta["cuda"], meta["settings"]["dtype"] = ran.get("torch_cuda"), ran.get("dtype")
        if ran["device"] == "cuda":
            meta["gpu"], meta["gpu_memory_gib"] = ran.get("device_name"), ran.get("device_total_gib")


def write_json(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]], total_s: float) -> None:
    """Written after every row, so a run stopped at its time limit still leaves what it measured."""
    data = {**meta, "total_wall_s": total_s, "rows": rows}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
