"""`legaltune ui`: the API (when a model is loaded) and the UI pages, one FastAPI app, one process."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from legaltune.serve.server import build_app, check_port, serve_app, set_threads
from legaltune.ui.pages import mount_ui


def _corpus(app: Any) -> Any:
    """The law corpus for article pages: the served run's, else the default one; None when unavailable."""
    served = getattr(app.state, "served", None)
    try:
        if served is not None:
            return served.generator.verifier().corpus
        from legaltune.corpus import build_corpus

        return build_corpus()
    except Exception as exc:  # the pages work without it; say why citations will not link
        print(f"warning: no law corpus ({exc}); citations will not link to article text", file=sys.stderr)
        return None


def run_ui(
    runs_dir: str | Path = "runs",
    run_dir: str | Path | None = None,
    model_name: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    threads: int | None = None,
    max_batch_size: int = 8,
    max_pending: int = 32,
) -> int:
    """Serve the UI over the runs under ``runs_dir``; with a run or model, chat with it (tuned and base)."""
    check_port(host, port)
    set_threads(threads)
    engine = None
    if run_dir is not None or model_name is not None:
        app, engine = build_app(
            run_dir, model_name, max_batch_size=max_batch_size, max_pending=max_pending, citations=True
        )
    else:
        from fastapi import FastAPI

        app = FastAPI(title="legaltune", docs_url=None, redoc_url=None, openapi_url=None)
    mount_ui(app, runs_dir, _corpus(app))
    return serve_app(app, engine, host, port, f"legaltune ui over {Path(runs_dir).resolve()}")
