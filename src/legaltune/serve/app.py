"""The OpenAI-compatible HTTP API: ``/v1/chat/completions`` (streamed or not), ``/v1/models``, ``/health``.

Every error is the OpenAI JSON envelope with a 4xx status for the client's mistakes (400 bad request,
404 unknown model or route, 413 body too large, 429 queue full) and 503 while shutting down; an
unexpected failure inside one request is a 500 for that request, and the server goes on. A client
that disconnects, mid-stream or while waiting, cancels its request: its row stops at the next decoding
step (or never starts) and its slot in the queue is free again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from legaltune.generate.load import Generator
from legaltune.serve.citations import CitationChecker
from legaltune.serve.engine import Busy, Closed, Engine, Sampling, Ticket
from legaltune.serve.prompt import PromptError, prompt_ids
from legaltune.serve.protocol import ChatRequest, chunk_body, completion_body, error_body, usage

DEFAULT_MAX_TOKENS = 512
MAX_BODY_BYTES = 4 * 2**20
_DISCONNECT_POLL_S = 0.2
_log = logging.getLogger("legaltune.serve")


@dataclass
class Served:
    """What the app serves: the engine, the prompt format of the loaded model, optional citation checks."""

    engine: Engine
    generator: Generator
    citations: CitationChecker | None = None
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    created: int = 0


def _error(status: int, message: str, kind: str = "invalid_request_error", **kw: Any) -> JSONResponse:
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return JSONResponse(error_body(message, kind, **kw), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts, param = [], None
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = ".".join(loc)
        param = param or where or None
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "invalid request", param


class _SSEResponse(StreamingResponse):
    """A stream that always closes its generator, so the request is cancelled the moment sending fails."""

    async def stream_response(self, send: Any) -> None:
        try:
            await super().stream_response(send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


async def _watch_disconnect(request: Request, ticket: Ticket) -> None:
    """Cancel the ticket when its client goes away, and wake whoever waits on its events."""
    while not await request.is_disconnected():
        await asyncio.sleep(_DISCONNECT_POLL_S)
    ticket.cancel()
    ticket.events.put_nowait(("gone",))


def create_app(served: Served) -> FastAPI:
    engine, gen = served.engine, served.generator
    served.created = served.created or int(time.time())
    app = FastAPI(title="legaltune", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.served = served

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _error(400, message, param=param)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        _log.error("request %s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")

    @app.middleware("http")
    async def _limit_body(request: Request, call_next: Any) -> Any:
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > MAX_BODY_BYTES:
            return _error(413, f"request body of {size} bytes exceeds the {MAX_BODY_BYTES} byte limit")
        return await call_next(request)

    def model_card(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": served.created, "owned_by": "legaltune"}

    @app.get("/health")
    async def health() -> JSONResponse:
        body = {"status": "ok" if engine.healthy else "unavailable", "models": list(engine.variants)}
        return JSONResponse({**body, **engine.stats()}, status_code=200 if engine.healthy else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(m) for m in engine.variants]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Any:
        if model_id not in engine.variants:
            return _unknown_model(model_id)
        return model_card(model_id)

    def _unknown_model(model_id: str) -> JSONResponse:
        known = ", ".join(engine.variants)
        return _error(
            404,
            f"model {model_id!r} is not served here; served: {known}",
            "not_found_error",
            param="model",
            code="model_not_found",
        )

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> Any:
        if body.model not in engine.variants:
            return _unknown_model(body.model)
        try:
            ids, context = prompt_ids(gen, body.messages)
        except (PromptError, ValueError) as exc:
            return _error(400, str(exc), param="messages")
        room = engine.context_length - len(ids)
        limit = body.token_limit
        if room < 1 or (limit is not None and limit > room):
            return _error(
                400,
                f"the prompt is {len(ids)} tokens and max_tokens {limit or 1}; together they exceed the "
                f"model's context of {engine.context_length} tokens",
                param="max_tokens" if room >= 1 else "messages",
                code="context_length_exceeded",
            )
        sampling = Sampling(body.model, body.temperature or 0.0, body.top_p or 1.0, body.seed)
        try:
            ticket = engine.submit(
                ids,
                max_tokens=limit or min(served.default_max_tokens, room),
                sampling=sampling,
                stop=tuple(body.stop),
            )
        except Busy as exc:
            return _error(429, str(exc), "rate_limit_error", code="queue_full")
        except Closed as exc:
            return _error(503, str(exc), "server_error", code="unavailable")
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _stream(served, request, ticket, rid, body.model, len(ids), include_usage, context)
            return _SSEResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await _whole(served, request, ticket, rid, body.model, len(ids), context)

    return app


def _extra(served: Served, text: str, context: str) -> dict[str, Any]:
    return {"citations": served.citations(text, context)} if served.citations else {}


async def _whole(
    served: Served, request: Request, ticket: Ticket, rid: str, model: str, n_prompt: int, context: str
) -> Any:
    watcher = asyncio.create_task(_watch_disconnect(request, ticket))
    try:
        while True:
            event = await ticket.events.get()
            if event[0] == "end":
                _, reason, text, n_new = event
                return completion_body(
                    rid, model, text, reason, n_prompt, n_new, _extra(served, text, context)
                )
            if event[0] == "error":
                return _error(500, event[1], "server_error")
            if event[0] == "gone":
                return _error(499, "client closed the request")  # nobody reads it; logged as such
    finally:
        watcher.cancel()
        ticket.cancel()  # a no-op once finished; frees the slot if we leave early


async def _stream(
    served: Served,
    request: Request,
    ticket: Ticket,
    rid: str,
    model: str,
    n_prompt: int,
    include_usage: bool,
    context: str,
) -> AsyncIterator[str]:
    watcher = asyncio.create_task(_watch_disconnect(request, ticket))
    try:
        yield _sse(chunk_body(rid, model, {"role": "assistant", "content": ""}))
        while True:
            event = await ticket.events.get()
            if event[0] == "text":
                yield _sse(chunk_body(rid, model, {"content": event[1]}))
            elif event[0] == "end":
                _, reason, text, n_new = event
                yield _sse(chunk_body(rid, model, {}, reason, **_extra(served, text, context)))
                if include_usage:
                    yield _sse(chunk_body(rid, model, None, usage=usage(n_prompt, n_new)))
                yield _sse("[DONE]")
                return
            elif event[0] == "error":
                # Headers are sent already: the error travels as an event, as OpenAI's own stream does.
                yield _sse(error_body(event[1], "server_error"))
                return
            else:  # gone
                return
    finally:
        watcher.cancel()
        with contextlib.suppress(Exception):
            ticket.cancel()
