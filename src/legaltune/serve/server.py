"""`legaltune serve`: load a run (adapter on its base) or a base model and serve it over HTTP."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from legaltune.evaluate.batch import Generator, load_generator
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


def _check_port(host: str, port: int) -> None:
    """Fail in a second, before minutes of model loading, when the address cannot be served."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ValueError(
                f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port or --host"
            ) from None


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
    import uvicorn

    from legaltune.serve.app import Served, create_app

    _check_port(host, port)
    if threads is not None:
        import torch

        if threads < 1:
            raise ValueError(f"--threads must be at least 1 (got {threads})")
        torch.set_num_threads(threads)  # on a shared CPU, fewer threads than cores avoids spin-waiting
    gen = load_generator(run_dir, model_name)
    variants = served_ids(run_dir, model_name)
    engine = build_engine(gen, variants, max_batch_size=max_batch_size, max_pending=max_pending)
    checker: CitationChecker | None = corpus_checker(gen) if citations else None
    if gen.context_fill != "none" and gen.use_context:
        gen.corpus_context({"question": "warm-up"})  # build the corpus index now, not in a request
    app = create_app(Served(engine, gen, checker))
    engine.start()
    names = " and ".join(repr(v.id) for v in variants)
    print(
        f"serving {names} on http://{host}:{port}/v1 (batch ≤ {max_batch_size}, queue ≤ {max_pending})",
        file=sys.stderr,
    )
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        engine.close()
    return 0
