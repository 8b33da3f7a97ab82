"""The web UI's routes, added to the API app: runs, a run's report, side-by-side chat, plan preview, articles.

The chat page talks to the same ``/v1/chat/completions`` as any client (streamed), once for the tuned
model and once for ``RUN:base``; citations in the answers link to ``/articles/LAW/N`` (the article's
text from the law corpus). Every value from a run, a config or an answer is HTML-escaped.
"""

from __future__ import annotations

import html
import io
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from legaltune.ui.runs import find_runs, is_run

e = html.escape
NAV = [("/", "Runs"), ("/chat", "Chat"), ("/plan", "Plan")]


def _asset(name: str) -> str:
    return resources.files("legaltune.ui.static").joinpath(name).read_text(encoding="utf-8")


def page(title: str, body: str, active: str = "") -> HTMLResponse:
    links = "".join(
        f'<a href="{href}"{" class=on" if href == active else ""}>{label}</a>' for href, label in NAV
    )
    return HTMLResponse(
        '<!DOCTYPE html><html lang="vi"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>legaltune · {e(title)}</title><link rel="stylesheet" href="/ui/ui.css"></head>'
        f"<body><nav><b>legaltune</b>{links}</nav><main>{body}</main></body></html>"
    )


def _num(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def runs_page(root: Path) -> HTMLResponse:
    rows = find_runs(root)
    if not rows:
        body = f"<p class=note>No run directories in {e(str(root))} yet (<code>legaltune train CONFIG</code>).</p>"
    else:
        cells = "".join(
            f'<tr><td><a href="/runs/{e(r.name)}">{e(r.name)}</a></td><td>{e(r.status)}</td>'
            f"<td class=n>{'' if r.steps is None else r.steps}</td><td class=n>{_num(r.loss)}</td>"
            f"<td class=n>{_num(r.eval_loss)}</td>"
            f"<td class=n>{'' if r.tuned_f1 is None else f'{100 * r.tuned_f1:.1f} %'}</td>"
            f"<td>{e(r.modified)}</td></tr>"
            for r in rows
        )
        body = (
            '<table id="runs"><tr><th>run</th><th>status</th><th class=n>steps</th><th class=n>loss</th>'
            f"<th class=n>eval loss</th><th class=n>token F1 (tuned)</th><th>modified</th></tr>{cells}</table>"
        )
    return page("runs", f"<h1>Runs in {e(str(root))}</h1>{body}", "/")


def run_page(root: Path, name: str) -> HTMLResponse:
    from legaltune.report.html import render_report

    path = root / name
    if "/" in name or name.startswith(".") or not is_run(path):
        return page("not found", f"<p class=note>No run {e(name)} in {e(str(root))}.</p>")
    report = render_report(path)  # plots, eval tables, data and config, as report.html
    nav = "".join(f'<a href="{h}">{label}</a>' for h, label in NAV)
    style = (
        "<style>nav.ui{display:flex;gap:18px;padding:10px 24px;background:#1d2330;color:#fff}"
        "nav.ui a{color:#cfd8e6;text-decoration:none}</style>"
    )
    return HTMLResponse(
        report.replace("<body>", f'<body>{style}<nav class="ui"><b>legaltune</b>{nav}</nav>', 1)
    )


def chat_page(models: list[str]) -> HTMLResponse:
    if not models:
        return page(
            "chat",
            "<h1>Chat</h1><p class=note>No model is loaded: start the UI with "
            "<code>legaltune ui --run RUN_DIR</code> (or <code>--model NAME</code>) to chat.</p>",
            "/chat",
        )
    tuned = models[0]
    base = next((m for m in models if m == f"{tuned}:base"), None)
    sides = [(tuned, "tuned"), *([(base, "base")] if base else [])]
    columns = "".join(
        f'<section class="side" id="side-{kind}" data-model="{e(model)}"><h2>{kind}: <code>{e(model)}</code></h2>'
        f'<div class="log" id="log-{kind}"></div></section>'
        for model, kind in sides
    )
    body = (
        f'<h1>Chat: base and tuned side by side</h1><div class="sides">{columns}</div>'
        '<form id="ask"><textarea id="question" rows="3" placeholder="Câu hỏi pháp lý…" required></textarea>'
        '<div class="row"><label>max tokens <input id="max-tokens" type="number" value="128" min="1"></label>'
        '<button id="send" type="submit">Send</button><button id="reset" type="button">Reset</button></div></form>'
        f"<script>{_asset('chat.js')}</script>"
    )
    return page("chat", body, "/chat")


def _plan_text(config_text: str, config_path: str, gpu_memory: str) -> str:
    from rich.console import Console

    from legaltune.config.load import load_config
    from legaltune.plan.core import make_plan, parse_size
    from legaltune.plan.render import render_plan

    with tempfile.TemporaryDirectory() as tmp:
        if config_text.strip():
            path = Path(tmp) / "config.yaml"
            path.write_text(config_text, encoding="utf-8")
        else:
            path = Path(config_path)
        cfg = load_config(str(path))
        examples = None
        if cfg.data.train_file and Path(cfg.data.train_file).is_file():
            from legaltune.data.sources import count_train_examples

            examples = count_train_examples(cfg)
        plan = make_plan(
            cfg, gpu_memory=parse_size(gpu_memory) if gpu_memory.strip() else None, train_examples=examples
        )
    console = Console(file=io.StringIO(), width=110, record=True, color_system=None)
    render_plan(plan, console)
    return console.export_text()


def plan_page(config_text: str = "", config_path: str = "", gpu_memory: str = "80GiB") -> HTMLResponse:
    result = ""
    if config_text.strip() or config_path.strip():
        try:
            result = f'<pre id="plan-result">{e(_plan_text(config_text, config_path, gpu_memory))}</pre>'
        except Exception as exc:  # a bad config is the user's to fix: show the message, not a traceback
            result = f'<pre id="plan-error" class="bad">{e(str(exc))}</pre>'
    body = (
        "<h1>Plan preview</h1><p class=note>Parameters, schedule, peak-memory estimate and lints of a config, "
        "without loading weights (what <code>legaltune plan</code> prints).</p>"
        '<form id="plan" method="post" action="/plan">'
        f'<label>config file (path on this machine) <input name="config_path" id="config-path" value="{e(config_path)}"'
        ' placeholder="configs/llama31-8b-recommended.yaml"></label>'
        f'<label>or YAML <textarea name="config_text" id="config-text" rows="8">{e(config_text)}</textarea></label>'
        f'<label>GPU memory <input name="gpu_memory" id="gpu-memory" value="{e(gpu_memory)}"></label>'
        '<button id="plan-go" type="submit">Plan</button></form>' + result
    )
    return page("plan", body, "/plan")


def article_page(corpus: Any, law: str, number: str) -> HTMLResponse:
    article = corpus.article(law, number) if corpus is not None else None
    if article is None:
        return page("article", f"<p class=note>No Điều {e(number)} of {e(law)} in the corpus.</p>")
    found = corpus.find_law(law)
    title = f"{article.heading} — {found.label if found else law}"
    return page(title, f'<h1>{e(title)}</h1><pre class="article" id="article-text">{e(article.text)}</pre>')


def mount_ui(app: FastAPI, runs_dir: str | Path, corpus: Any = None) -> None:
    """Add the UI's pages to ``app`` (the API app, or a bare one when no model is loaded)."""
    root = Path(runs_dir)
    served = getattr(app.state, "served", None)
    models = list(served.engine.variants) if served is not None else []

    app.get("/", response_class=HTMLResponse)(lambda: runs_page(root))
    app.get("/runs/{name}", response_class=HTMLResponse)(lambda name: run_page(root, name))
    app.get("/chat", response_class=HTMLResponse)(lambda: chat_page(models))
    app.get("/plan", response_class=HTMLResponse)(lambda: plan_page())
    app.get("/articles/{law:path}/{number}", response_class=HTMLResponse)(
        lambda law, number: article_page(corpus, law, number)
    )

    @app.post("/plan", response_class=HTMLResponse)
    async def plan_post(request: Request) -> Any:
        # a plain urlencoded form, parsed here: no multipart dependency for three text fields
        form = parse_qs((await request.body()).decode("utf-8", "replace"))

        def field(name: str) -> str:
            return form.get(name, [""])[0]

        return plan_page(field("config_text"), field("config_path"), field("gpu_memory"))

    @app.get("/ui/ui.css")
    def css() -> Response:
        return Response(_asset("ui.css"), media_type="text/css")
