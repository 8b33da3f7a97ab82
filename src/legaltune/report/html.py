"""`legaltune report RUN_DIR`: one self-contained HTML page per run.

Everything is read from the run directory (config.yaml, metrics.jsonl, data_stats.json,
train_summary.json, eval.json); any of them may be missing and the page says so instead of
failing, so a report can be written mid-training or before evaluation. Plots are matplotlib PNGs
embedded as base64 and the CSS is inline: the file can be mailed or archived on its own. All text
from the run (questions, answers, config) goes through ``html.escape``.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from legaltune.run.layout import RunDir
from legaltune.run.layout import read_json as _read_json

GIB = 2**30

CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#dfe3ea; --bg:#f6f7f9; --accent:#2457a6;
  --good:#1a7f37; --bad:#c0392b; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
  font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","DejaVu Sans",sans-serif; }
main { max-width:1120px; margin:0 auto; padding:28px 24px 48px; }
h1 { font-size:24px; margin:0 0 4px; } h2 { font-size:19px; margin:0 0 12px; }
h3 { font-size:15px; margin:0 0 6px; }
.sub { color:var(--muted); margin:0 0 20px; word-break:break-all; }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding:18px 20px;
  margin:0 0 18px; }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(200px,1fr)); gap:10px; margin:0 0 18px; }
.card { background:#fff; border:1px solid var(--line); border-radius:10px; padding:10px 14px; }
.card .k { color:var(--muted); font-size:12.5px; } .card .v { font-size:19px; font-weight:600; }
.grid2 { display:grid; grid-template-columns:1fr 1fr; gap:14px; }
@media (max-width:800px) { .grid2 { grid-template-columns:1fr; } }
img { width:100%; height:auto; display:block; }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
th, td { padding:5px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { color:var(--muted); font-weight:600; font-size:13px; }
td.n, th.n { text-align:right; white-space:nowrap; }
tr:nth-child(even) td { background:#fafbfc; }
.good { color:var(--good); font-weight:600; } .bad { color:var(--bad); font-weight:600; }
.note { color:var(--muted); font-size:13.5px; margin:8px 0 0; }
.qa { border:1px solid var(--line); border-radius:8px; padding:12px 14px; margin:0 0 12px; }
.qa .q { font-weight:600; margin:0 0 8px; white-space:pre-wrap; }
.qa .cols { display:grid; grid-template-columns:repeat(3,1fr); gap:10px; }
@media (max-width:900px) { .qa .cols { grid-template-columns:1fr; } }
.qa .ans { background:var(--bg); border-radius:6px; padding:8px 10px; white-space:pre-wrap;
  font-size:14px; overflow-wrap:anywhere; }
.qa .lbl { font-size:12px; color:var(--muted); text-transform:uppercase; letter-spacing:.04em;
  margin:0 0 3px; }
.qa .lbl .meta { text-transform:none; letter-spacing:0; }
pre { background:#f1f3f6; border-radius:8px; padding:12px 14px; overflow:auto; font-size:13px;
  line-height:1.45; margin:0; }
"""

e = html.escape


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows sorted by step; unreadable lines (a log cut mid-write) are skipped."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int | float):
                rows.append(row)
    return sorted(rows, key=lambda r: r["step"])


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(title: str, ylabel: str) -> tuple[Any, Any]:
    # Figure + the Agg canvas directly, never pyplot: no global backend switch, so calling this from a
    # notebook or a GUI session leaves its matplotlib setup alone, and no display is ever needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _line(ax: Any, xs: list[float], ys: list[float], label: str, color: str) -> None:
    ax.plot(xs, ys, color=color, label=label, marker="o" if len(xs) <= 30 else None, markersize=3.5)


def training_plots(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(alt text, base64 PNG) for loss, learning rate, tokens/s, peak memory and (DPO / ORPO / GRPO)
    rewards; empty series are left out."""
    plots = []
    train, ev = _series(rows, "loss"), _series(rows, "eval_loss")
    if train[0] or ev[0]:
        fig, ax = _figure("Loss", "loss")
        if train[0]:
            _line(ax, *train, "train", "#2457a6")
        if ev[0]:
            _line(ax, *ev, "eval", "#d9822b")
        ax.legend()
        plots.append(("train and eval loss vs step", _png(fig)))
    for key, title, ylabel, color in (
        ("lr", "Learning-rate schedule", "learning rate", "#6b4fbb"),
        ("tokens_per_s", "Throughput", "tokens / s", "#1a7f37"),
        ("peak_memory_gib", "Peak memory", "GiB", "#c0392b"),
    ):
        xs, ys = _series(rows, key)
        if xs:
            fig, ax = _figure(title, ylabel)
            _line(ax, xs, ys, key, color)
            if key == "lr":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
            plots.append((f"{title.lower()} vs step", _png(fig)))
    # DPO / ORPO: rewards/chosen|rejected|margins|accuracies; GRPO: rewards/<function>/mean
    rewards = sorted({k for r in rows for k in r if k.startswith("rewards/") and not k.endswith("/std")})
    drawn = [(k, _series(rows, k)) for k in rewards]
    if any(xs for _k, (xs, _ys) in drawn):
        fig, ax = _figure("Rewards", "value")
        palette = ("#2457a6", "#d9822b", "#1a7f37", "#c0392b", "#6b4fbb", "#7f8c8d")
        for i, (key, (xs, ys)) in enumerate(d for d in drawn if d[1][0]):
            _line(ax, xs, ys, key.removeprefix("rewards/").removesuffix("/mean"), palette[i % len(palette)])
        ax.legend()
        plots.append(("rewards vs step", _png(fig)))
    return plots


def _table(head: list[str], body: list[list[str]], numeric_from: int = 1) -> str:
    """An HTML table; cells are already-escaped HTML. Columns from ``numeric_from`` are right-aligned."""
    th = "".join(f'<th class="{"n" if i >= numeric_from else ""}">{h}</th>' for i, h in enumerate(head))
    trs = "".join(
        "<tr>"
        + "".join(f'<td class="{"n" if i >= numeric_from else ""}">{c}</td>' for i, c in enumerate(r))
        + "</tr>"
        for r in body
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _memory_section(
    cfg: Any, cfg_error: str | None, rows: list[dict[str, Any]], stats: Any, summary: Any = None
) -> str:
    peaks = [r["peak_memory_gib"] for r in rows if isinstance(r.get("peak_memory_gib"), int | float)]
    measured = max(peaks) if peaks else None
    on_cpu = cfg is not None and cfg.model.device_map == "cpu"
    parts = ["<h2>Memory: plan estimate vs measured peak</h2>"]
    estimate, why = _plan_estimate(cfg, stats, summary) if cfg is not None else (None, cfg_error)
    body = []
    if estimate is not None:
        for name, b in estimate.components.items():
            body.append([e(name), f"{b / GIB:.2f}"])
        body.append(["<b>estimated peak</b>", f"<b>{estimate.peak_bytes / GIB:.2f}</b>"])
    else:
        body.append([f"estimate unavailable: {e(why or 'unknown architecture')}", ""])
    body.append(
        ["<b>measured peak</b> (max over metrics.jsonl)", f"<b>{measured:.2f}</b>" if measured else "—"]
    )
    table = _table(["component", "GiB"], body)
    if estimate is not None:  # a lone measured bar says nothing the table does not
        alt, b64 = _memory_plot(estimate, measured)
        img = f'<img alt="{e(alt)}" src="data:image/png;base64,{b64}">'
        parts.append(f'<div class="grid2"><div>{table}</div>{img}</div>')
    else:
        parts.append(table)
    note = (
        "Measured on CPU: the process's peak resident memory (Python, data, fp32 weights), which the GPU "
        "estimate does not model — compare the two on GPU runs only."
        if on_cpu
        else "Measured: torch.cuda.max_memory_allocated (the CUDA context, ~1 GiB, is in neither number); "
        "on a CPU run it is the process's peak resident memory instead."
    )
    parts.append(f'<p class="note">{e(note)}</p>')
    return "<section>" + "".join(parts) + "</section>"


def _memory_plot(estimate: Any, measured: float | None) -> tuple[str, str]:
    """Horizontal bars: the estimate stacked by component, the measured peak beside it."""
    fig, ax = _figure("Peak memory: estimate vs measured", "")
    ax.set_xlabel("GiB")
    ax.grid(alpha=0.3, axis="x")
    ax.grid(False, axis="y")
    colors = ["#2457a6", "#5b8bd6", "#9bb8e8", "#6b4fbb", "#d9822b", "#1a7f37", "#c0392b", "#7f8c8d"]
    if estimate is not None:
        left = 0.0
        for i, (name, b) in enumerate(estimate.components.items()):
            ax.barh("estimate", b / GIB, left=left, color=colors[i % len(colors)], label=name)
            left += b / GIB
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    if measured:
        ax.barh("measured", measured, color="#444b59")
    ax.invert_yaxis()
    return "plan memory estimate by component vs measured peak", _png(fig)


def _run_checkpoint_layers(summary: Any) -> int | None:
    """How many layers the run checkpointed (train_summary.json's speed report), None = all/unknown."""
    mode = str(((summary or {}).get("speed") or {}).get("checkpointing") or "")
    if mode == "none":
        return 0
    count = mode.rpartition(" ")[2].partition("/")[0]
    return int(count) if count.isdigit() else None


def _run_micro_batch(summary: Any) -> tuple[int, int] | None:
    """The (rows, tokens) one forward of the run held: its plan's largest micro-batch, or the cap
    of one forward where it trained a micro-batch in several (None: the config's worst case)."""
    plan = (summary or {}).get("plan") or {}
    micro, cap = plan.get("micro_batch"), plan.get("forward_tokens")
    if not micro or not micro[0]:
        return None
    return (1, int(cap)) if cap else (int(micro[0]), int(micro[1]))


def _plan_estimate(cfg: Any, stats: Any, summary: Any = None) -> tuple[Any, str | None]:
    from legaltune.model.arch import canonical_key

    name = cfg.model.model_name
    if canonical_key(name) is None and not Path(name).expanduser().is_dir():
        # make_plan would ask the hub; a report must not hang on the network
        return None, f"the architecture of {name} is not known offline"
    try:
        from legaltune.plan.core import make_plan

        examples = (stats or {}).get("train", {}).get("examples")
        layers = _run_checkpoint_layers(summary)  # what speed.mode auto chose on the run's GPU
        micro = _run_micro_batch(summary)  # planned for the data, as the run was
        host_table = bool(((summary or {}).get("plan") or {}).get("embeddings_on_host"))
        return make_plan(
            cfg,
            train_examples=examples,
            checkpoint_layers=layers,
            micro_batch=micro,
            embeddings_on_host=host_table,
        ).memory, None
    except Exception as exc:  # any arch/plan problem only costs this one table
        return None, f"{type(exc).__name__}: {exc}"


def _eval_section(ev: dict[str, Any] | None) -> str:
    if not ev:
        return (
            "<section><h2>Evaluation: base vs tuned</h2><p class='note'>No eval.json yet: run "
            "<code>legaltune eval --run RUN_DIR</code> to add loss, perplexity, EM/F1/ROUGE-L/BLEU and "
            "citation scores here.</p></section>"
        )
    from legaltune.evaluate.table import table_rows

    body = []
    for label, b, t, delta, sign in table_rows(ev):
        cls = {1: "good", -1: "bad"}.get(sign, "")
        body.append([e(label), e(b), e(t), f'<span class="{cls}">{e(delta)}</span>'])
    d, g = ev.get("data", {}), ev.get("generation", {})
    limit = (
        f", the first {d['limit']} of {d.get('available')} (--limit)" if d.get("limit") is not None else ""
    )
    note = (
        f"{d.get('questions')} questions from {d.get('source')}{limit}; "
        f"{'sampled' if g.get('do_sample') else 'greedy'} decoding, "
        f"at most {g.get('max_new_tokens')} new tokens; "
        f"loss over {d.get('loss_tokens', 0):,} answer tokens. Citation scores are micro-averaged; the base "
        f"is the same weights with the adapter disabled. Evaluated {ev.get('created_at', '')}."
    )
    parts = [
        "<section><h2>Evaluation: base vs tuned</h2>",
        _table(["metric", "base", "tuned", "Δ"], body),
        f'<p class="note">{e(note)}</p></section>',
    ]
    questions = ev.get("questions", [])
    if questions:
        parts.append(f"<section><h2>Sample answers ({min(5, len(questions))} of {len(questions)})</h2>")
        parts += [_sample(q) for q in questions[:5]]
        parts.append("</section>")
    return "".join(parts)


def _answer_block(name: str, text: str, m: dict[str, Any] | None) -> str:
    meta = ""
    if m:
        stop = "stopped" if m.get("stopped") else "hit the token limit"
        meta = f" · F1 {100 * m.get('token_f1', 0):.0f} % · {m.get('new_tokens')} tokens, {stop}"
    label = f'<p class="lbl">{e(name)}<span class="meta">{e(meta)}</span></p>'
    return f'<div>{label}<div class="ans">{e(text) or "<i>(empty)</i>"}</div></div>'


def _sample(q: dict[str, Any]) -> str:
    """One question with the reference, base and tuned answers side by side."""
    blocks = [_answer_block("reference", q.get("reference", ""), None)]
    blocks += [
        _answer_block(side, q[side].get("answer", ""), q[side])
        for side in ("base", "tuned")
        if isinstance(q.get(side), dict)
    ]
    ident = e(str(q.get("id") or q.get("loc") or ""))
    return (
        f'<div class="qa"><p class="lbl">{ident}</p><p class="q">{e(q.get("question", ""))}</p>'
        f'<div class="cols">{"".join(blocks)}</div></div>'
    )


_DATA_ROWS = [
    ("records", "records read"),
    ("examples", "examples kept"),
    ("rows", "rows (packed)"),
    ("tokens", "tokens"),
    ("trained_tokens", "trained tokens"),
]
# Shown only when non-zero in a split: a table of zeros hides the one count that matters.
_DATA_PROBLEMS = [
    ("not_selected", "left out by max_*_examples"),
    ("duplicates", "duplicates dropped"),
    ("skipped_bad", "malformed, skipped"),
    ("truncated", "truncated"),
    ("answers_lost_tokens", "answers that lost tokens"),
    ("dropped_overlength", "dropped: too long"),
    ("dropped_no_trained_tokens", "dropped: no trained token"),
]


def _data_section(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "<section><h2>Data</h2><p class='note'>No data_stats.json in the run directory.</p></section>"
    tr, ev = stats.get("train", {}), stats.get("eval", {})

    def fmt(v: Any) -> str:
        return f"{v:,}" if isinstance(v, int) else e(str(v)) if v is not None else "—"

    body = [[e(label), fmt(tr.get(k)), fmt(ev.get(k))] for k, label in _DATA_ROWS]
    body += [
        [e(label), fmt(tr.get(k)), fmt(ev.get(k))] for k, label in _DATA_PROBLEMS if tr.get(k) or ev.get(k)
    ]
    all_clean = not any(tr.get(k) or ev.get(k) for k, _ in _DATA_PROBLEMS)
    body.append(
        [
            "trained fraction of tokens",
            *(f"{100 * s.get('trained_fraction', 0):.1f} %" if s else "—" for s in (tr, ev)),
        ]
    )
    for key in ("p50", "p95", "max"):
        body.append(
            [f"length {key} (tokens)", *(fmt(s.get("length_percentiles", {}).get(key)) for s in (tr, ev))]
        )
    for key, value in tr.get("efficiency", {}).items():
        body.append([e(f"token efficiency: {key.replace('_', ' ')}"), f"{100 * value:.1f} %", ""])
    schemas = ", ".join(f"{k} {v}" for k, v in tr.get("schemas", {}).items())
    hyg = stats.get("hygiene", {})
    fixes = ", ".join(f"{k} {v}" for k, v in hyg.items() if v and k not in ("texts", "changed"))
    hygiene = f"{hyg.get('changed', 0)} of {hyg.get('texts', 0)} texts changed" + (
        f" ({fixes})" if fixes else ""
    )
    note = (
        f"max_seq_length {stats.get('max_seq_length')}, packing {stats.get('packing')}, train_on "
        f"{stats.get('train_on')}; train schemas: {schemas or '—'}; eval questions also in train: "
        f"{stats.get('overlap_train_eval', 0)}; hygiene: {hygiene}."
        + (
            " No record was sampled out, duplicated, malformed, truncated or dropped."
            if all_clean
            else " Counts not listed (sampling, duplicates, malformed, truncated, dropped) are zero."
        )
    )
    return (
        "<section><h2>Data</h2>"
        + _table(["", "train", "eval"], body)
        + f'<p class="note">{e(note)}</p></section>'
    )


def _cards(
    cfg: Any, rows: list[dict[str, Any]], summary: dict[str, Any] | None, ev: dict[str, Any] | None
) -> str:
    cards: list[tuple[str, str]] = []
    if cfg is not None:
        cards.append(("base model", Path(cfg.model.model_name).name or cfg.model.model_name))
        cards.append(("LoRA", f"r {cfg.lora.r}, α {cfg.lora.lora_alpha:g}"))
    steps = [r["step"] for r in rows]
    if steps:
        cards.append(("optimizer steps", f"{int(max(steps)):,}"))
    losses = _series(rows, "loss")[1]
    if losses:
        cards.append(("last train loss", f"{losses[-1]:.4f}"))
    evals = _series(rows, "eval_loss")[1]
    if summary and summary.get("eval_loss_before") is not None and summary.get("eval_loss_after") is not None:
        cards.append(
            (
                "eval loss before → after",
                f"{summary['eval_loss_before']:.3f} → {summary['eval_loss_after']:.3f}",
            )
        )
    elif evals:
        cards.append(("eval loss first → last", f"{evals[0]:.3f} → {evals[-1]:.3f}"))
    wall = (summary or {}).get("train", {}).get("wall_s")
    if wall:
        cards.append(("training time", f"{wall / 60:.1f} min" if wall >= 60 else f"{wall:.0f} s"))
    if ev and ev.get("tuned"):
        t, b = ev["tuned"], ev.get("base") or {}
        f1 = f"{100 * t['token_f1']:.1f} %"
        if b.get("token_f1") is not None:
            f1 = f"{100 * b['token_f1']:.1f} → {f1}"
        cards.append(("token F1 base → tuned" if b else "token F1 (tuned)", f1))
    if (summary or {}).get("interrupted"):
        at = f" at step {summary['step']}/{summary['max_steps']}" if summary.get("max_steps") else ""
        cards.append(("status", f"interrupted{at}"))
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="k">{e(k)}</div><div class="v">{e(v)}</div></div>'
            for k, v in cards
        )
        + "</div>"
    )


def _load_cfg(path: Path) -> tuple[Any, str | None]:
    if not path.is_file():
        return None, "no config.yaml in the run directory"
    try:
        from legaltune.config.load import load_config

        return load_config(path), None
    except Exception as exc:  # a config from another legaltune version: the page still renders
        return None, f"config.yaml does not load: {str(exc).splitlines()[0]}"


def render_report(run_dir: str | Path) -> str:
    """The report page for ``run_dir`` as an HTML string."""
    rd = RunDir(Path(run_dir))
    run = rd.path
    cfg, cfg_error = _load_cfg(rd.config)
    rows = read_metrics(rd.metrics)
    stats = _read_json(rd.data_stats)
    summary = _read_json(rd.summary)
    ev = _read_json(rd.eval)
    plots = training_plots(rows)
    if plots:
        imgs = "".join(
            f'<figure style="margin:0"><img alt="{e(alt)}" src="data:image/png;base64,{b64}"></figure>'
            for alt, b64 in plots
        )
        curves = f'<div class="grid2">{imgs}</div>'
    else:
        curves = "<p class='note'>No metrics.jsonl rows yet (training has not logged a step).</p>"
    if not _series(rows, "eval_loss")[0] and rows:
        curves += (
            "<p class='note'>No eval loss was logged during training "
            "(logging.eval_strategy is no, or the run has no eval data).</p>"
        )
    config_text = rd.config.read_text(encoding="utf-8") if rd.config.is_file() else ""
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    body = [
        f"<h1>legaltune run report: {e(run.resolve().name)}</h1>",
        f'<p class="sub">{e(str(run.resolve()))} · generated {e(now)}</p>',
        _cards(cfg, rows, summary, ev),
        f"<section><h2>Training</h2>{curves}</section>",
        _memory_section(cfg, cfg_error, rows, stats, summary),
        _eval_section(ev),
        _data_section(stats),
        f"<section><h2>Config</h2><pre>{e(config_text) or e(cfg_error or '')}</pre></section>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="vi"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>legaltune · {e(run.resolve().name)}</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html (atomically: a browser never sees half a page) and return its path."""
    from legaltune.run.atomic import write_text_atomic
    from legaltune.run.layout import open_run

    run = open_run(run_dir)  # "no such run" / "not a run directory" rather than a page about nothing
    return write_text_atomic(run.report, render_report(run.path), "report")
