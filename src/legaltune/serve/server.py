"""`legaltune serve`: load a run (adapter on its base) or a base model and serve it over HTTP."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from fastapi import FastAPI

from legaltune.errors import InputError
from legaltune.generate.load import Generator, load_generator
from legaltune.serve.citations import CitationChecker, corpus_checker
from legaltune.serve.engine import Engine, Variant


def served_ids(run_dir: str | Path | None, model_name: str | None) -> list[Variant]:
    """The model ids clients ask for: a run is ``RUN_NAME`` (tuned) and ``RUN_NAME:base`` (the same
    weights with the adapter disabled); a base model alone is its name's last path part."""
    if run_dir is not None:
        name = Path(run_dir).resolve().name
        return [Variant(name, adapter=True), Variant(f"{name}:base", adapter=False)]
    return [Variant(Path(str(model_name)).name or str(model_name), adapter=False)]


def build_engine(gen: Generator, variants: list[Variant], **limits: int) -> Engine:
    return Engine(gen.model, gen.tokenizer, variants, end_of_turn=gen.end_of_turn, **limits)


def check_port(host: str, port: int) -> None:
    """Fail in a second, before minutes of model loading, when the address cannot be served."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise InputError(
                f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port or --host"
            ) from None


def set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        if threads < 1:
            raise InputError(f"--threads must be at least 1 (got {threads})")
        torch.set_num_threads(threads)  # on a shared CPU, fewer threads than cores avoids spin-waiting


def build_app(
    run_dir: str | Path | None,
    model_name: str | None,
    *,
    max_batch_size: int = 8,
    max_pending: int = 32,
    citations: bool = False,
) -> tuple[FastAPI, Engine]:
    """The API app over a loaded run or base model, and its (not yet started) engine."""
    from legaltune.serve.app import Served, create_app

    gen = load_generator(run_dir, model_name)
    engine = build_engine(
        gen, served_ids(run_dir, model_name), max_batch_size=max_batch_size, max_pending=max_pending
    )
    checker: CitationChecker | None = corpus_checker(gen) if citations else None
    if gen.context_fill != "none" and gen.use_context:
        gen.corpus_context({"question": "warm-up"})  # build the corpus index now, not in a request
    return create_app(Served(engine, gen, checker)), engine


def serve_app(app: FastAPI, engine: Engine | None, host: str, port: int, what: str) -> int:
    """Run uvicorn until Ctrl-C, with the engine's worker running beside it."""
    import uvicorn

    if engine is not None:
        engine.start()
    print(f"{what} on http://{host}:{port}", file=sys.stderr)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        if engine is not None:
            engine.close()
    return 0


def run_server(
    run_dir: str | Path | None = None,
    model_name: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch_size: int = 8,
    max_pending: int = 32,
    citations: bool = False,
    threads: int | None = None,
) -> int:
    """Serve until interrupted (Ctrl-C): requests in flight finish, queued ones get a 503."""
    check_port(host, port)
    set_threads(threads)
    app, engine = build_app(
        run_dir, model_name, max_batch_size=max_batch_size, max_pending=max_pending, citations=citations
    )
    names = " and ".join(repr(v) for v in engine.variants)
    what = f"serving {names} (batch ≤ {max_batch_size}, queue ≤ {max_pending}); API"
    return serve_app(app, engine, host, port, what + " at /v1")
