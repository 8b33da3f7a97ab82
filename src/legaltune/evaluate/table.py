"""`legaltune eval`'s result as a table: base, tuned and the change per metric (also the HTML report's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from legaltune.run.layout import EVAL as EVAL_FILE

# (key, label, format, which direction is better: -1 lower, +1 higher, 0 neither)
TABLE_ROWS: list[tuple[str, str, str, int]] = [
    ("loss", "eval loss (token-weighted)", "f4", -1),
    ("perplexity", "perplexity", "f2", -1),
    ("exact_match", "exact match", "pct", 1),
    ("token_f1", "token F1 (syllables)", "pct", 1),
    ("rouge_l", "ROUGE-L", "pct", 1),
    ("bleu", "BLEU", "f2", 1),
    ("citation_precision", "citation precision", "pct", 1),
    ("citation_recall", "citation recall", "pct", 1),
    ("citation_f1", "citation F1", "pct", 1),
    ("citation_precision_article_level", "citation precision (article level)", "pct", 1),
    ("citation_recall_article_level", "citation recall (article level)", "pct", 1),
    ("citation_f1_article_level", "citation F1 (article level)", "pct", 1),
    ("hallucinated_rate", "hallucinated citations (law in corpus)", "pct", -1),
    ("hallucinated_article_rate", "  … of a missing article", "pct", -1),
    ("supported_rate", "citations supported by the article", "pct", 1),
    ("mean_new_tokens", "mean answer length (tokens)", "f1", 0),
    ("mean_syllables", "mean answer length (syllables)", "f1", 0),
    ("stopped_rate", "answers that stop", "pct", 1),
]


def fmt_value(value: float | None, kind: str) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.1f} %" if kind == "pct" else f"{value:.{kind[1]}f}"


def fmt_delta(base: float | None, tuned: float | None, kind: str) -> str:
    if base is None or tuned is None:
        return ""
    d = tuned - base
    return f"{100 * d:+.1f} pt" if kind == "pct" else f"{d:+.{kind[1]}f}"


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str, str, int]]:
    """(label, base, tuned, delta, sign) per metric; sign is +1 better, -1 worse, 0 neutral/unknown."""
    base, tuned = result.get("base") or {}, result["tuned"]
    out = []
    for key, label, kind, better in TABLE_ROWS:
        b, t = base.get(key), tuned.get(key)
        sign = 0 if (b is None or t is None or better == 0 or t == b) else (1 if (t - b) * better > 0 else -1)
        out.append((label, fmt_value(b, kind), fmt_value(t, kind), fmt_delta(b, t, kind), sign))
    return out


def render_eval(result: dict[str, Any], console: Any = None) -> None:
    """Print base vs tuned (and the change) as a rich table."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    d, g = result["data"], result["generation"]
    limit = f", first {d['limit']} of {d['available']} (--limit)" if d["limit"] is not None else ""
    table = Table(
        title=f"{result['run_dir']}: {d['questions']} questions from {d['source']}{limit}",
        caption=(
            f"{'sampled' if g['do_sample'] else 'greedy'}, ≤ {g['max_new_tokens']} new tokens; "
            + (
                f"loss over {d['loss_tokens']:,} answer tokens"
                if d["loss_tokens"]
                else "no loss pass (--no-loss)"
            )
            + f"; written to {Path(result['run_dir']) / EVAL_FILE}"
        ),
    )
    table.add_column("metric")
    table.add_column("base", justify="right")
    table.add_column("tuned", justify="right")
    table.add_column("Δ", justify="right")
    for label, b, t, delta, sign in table_rows(result):
        style = {1: "green", -1: "red"}.get(sign, "")
        table.add_row(label, b, t, f"[{style}]{delta}[/{style}]" if style else delta)
    console.print(table)
    by = result["tuned"].get("by_context")
    if by:
        base_by = (result.get("base") or {}).get("by_context") or {}
        for name, label in (("corpus", "law text from the corpus"), ("own", "their own context")):
            t, b = by[name], base_by.get(name, {})
            cells = ", ".join(
                f"{lab} {fmt_value(b.get(k), 'pct')} → {fmt_value(t.get(k), 'pct')}"
                for k, lab in (
                    ("citation_f1_article_level", "article F1"),
                    ("hallucinated_rate", "hallucinated"),
                    ("supported_rate", "supported"),
                )
            )
            console.print(f"{t['questions']} questions asked with {label} (base → tuned): {cells}")
    if result.get("trainer_eval_loss") is not None:
        console.print(f"trainer's final eval loss (train_summary.json): {result['trainer_eval_loss']:.4f}")
