"""`legaltune data check`: what training will see, printed before any GPU time is spent."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from legaltune.data.context import ContextCounts
from legaltune.data.prepare import DataStats, PreparedData

_CONTEXT_ROWS = (
    ("filled", "context from the law corpus"),
    ("not_in_corpus", "  … citation not in the corpus (own kept)"),
    ("no_citation", "  … no citation (own kept)"),
    ("retrieval", "  … retrieved articles include the cited one"),
    ("cut", "  … cut to data.context_max_chars"),
    ("not_applicable", "  … schema without a context"),
)


def _context_cell(counts: ContextCounts | None, key: str) -> str:
    if counts is None:
        return "-"
    if key == "retrieval":
        if counts.mode != "retrieved":
            return "-"
        n = counts.retrieval_checked
        return f"{counts.retrieval_hits}/{n} ({counts.retrieval_hits / n:.0%})" if n else "0/0"
    return str(getattr(counts, key))


def render_check(prep: PreparedData, console: Console | None = None) -> None:
    console = console or Console()
    s: DataStats = prep.stats
    t = Table(
        title=f"Data check (max_seq_length {s.max_seq_length}, packing {s.packing}, train_on {s.train_on})"
    )
    t.add_column("")
    t.add_column("train", justify="right")
    t.add_column("eval", justify="right")
    tr, ev = s.train, s.eval

    def row(name: str, a: object, b: object) -> None:
        t.add_row(name, str(a), str(b))

    row("records read", tr.records, ev.records)
    row(
        "schemas",
        ", ".join(f"{k} {v}" for k, v in tr.schemas.items()),
        ", ".join(f"{k} {v}" for k, v in ev.schemas.items()),
    )
    row("malformed, skipped", tr.skipped_bad, ev.skipped_bad)
    if tr.context or ev.context:
        for key, label in _CONTEXT_ROWS:
            row(label, _context_cell(tr.context, key), _context_cell(ev.context, key))
    row("exact duplicates dropped", tr.duplicates, ev.duplicates)
    row("left out by max_*_examples", tr.not_selected, ev.not_selected)
    row("truncated to max_seq_length", tr.truncated, ev.truncated)
    row(
        "  … of which answers lost tokens",
        f"{tr.answers_lost_tokens} ({tr.lost_trained_tokens} tokens)",
        f"{ev.answers_lost_tokens} ({ev.lost_trained_tokens} tokens)",
    )
    row("dropped: too long (overlength: drop)", tr.dropped_overlength, ev.dropped_overlength)
    row("dropped: no trained token left", tr.dropped_no_trained_tokens, ev.dropped_no_trained_tokens)
    row("examples used", tr.examples, ev.examples)
    row("rows (after packing)", tr.rows, ev.rows)
    row("tokens", f"{tr.tokens:,}", f"{ev.tokens:,}")
    row("trained-token fraction", f"{tr.trained_fraction:.1%}", f"{ev.trained_fraction:.1%}")
    row(
        "chars per token",
        f"{tr.chars / tr.tokens:.2f}" if tr.tokens else "-",
        f"{ev.chars / ev.tokens:.2f}" if ev.tokens else "-",
    )
    for key in ("min", "p50", "p90", "p95", "p99", "max"):
        row(f"length {key}", tr.length_percentiles.get(key, "-"), ev.length_percentiles.get(key, "-"))
    for key, label in (
        ("padded_to_max_seq_length", "efficiency: padded to max_seq_length"),
        ("padded_to_longest_in_batch", "efficiency: padded to longest in batch"),
        ("packed_rows_fill", "efficiency: packed rows fill"),
    ):
        if key in tr.efficiency:
            row(
                label,
                f"{tr.efficiency[key]:.1%}",
                f"{ev.efficiency[key]:.1%}" if key in ev.efficiency else "-",
            )
    console.print(t)
    h = s.hygiene
    console.print(
        f"hygiene: {h.get('texts', 0)} texts, {h.get('changed', 0)} changed — NFC {h.get('nfc', 0)}, tone marks "
        f"{h.get('tone', 0)}, word underscores {h.get('underscores', 0)}, newlines {h.get('newlines', 0)}, BOM {h.get('bom', 0)}, "
        f"invisible characters removed {h.get('invisible', 0)}, mojibake repaired {h.get('mojibake', 0)}"
    )
    if s.overlap_train_eval:
        console.print(f"[yellow]warning:[/yellow] {s.overlap_train_eval} eval questions also appear in train")
    for split, stats in (("train", tr), ("eval", ev)):
        if stats.context and stats.context.examples.get("not_in_corpus"):
            where = ", ".join(stats.context.examples["not_in_corpus"])
            console.print(
                f"{split}: {stats.context.not_in_corpus} records cite a law or article not in the corpus "
                f"and keep their own context, e.g. {escape(where)}"
            )
    for reason in tr.skipped_reasons + ev.skipped_reasons:
        console.print(f"skipped: {escape(reason)}")
    if prep.first_example:
        fe = prep.first_example
        text, spans = fe["text"], fe["spans"]
        parts, pos = [], 0
        for a, b in spans:
            parts.append(f"[dim]{escape(text[pos:a])}[/dim]")
            parts.append(f"[bold green]⟦{escape(text[a:b])}⟧[/bold green]")
            pos = b
        parts.append(f"[dim]{escape(text[pos:])}[/dim]")
        console.print(f"\nfirst example ({fe['loc']}); trained text between ⟦ ⟧, masked text dimmed:")
        console.print("".join(parts))
