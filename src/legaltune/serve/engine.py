"""The inference engine behind ``legaltune serve``: a bounded queue and one worker that batches.

Requests are admitted up to ``max_pending`` (queued + generating); past that ``submit`` raises
``Busy`` at once (HTTP 429) instead of letting latency grow without bound. One worker thread owns
the model: it takes the oldest request and every queued request that can share its ``generate`` call
(same model variant and sampling settings), up to ``max_batch_size``, and runs them as one left-padded
batch. Rows finish on their own (end of turn, stop string, their token limit, their client leaving);
a batch ends when its last row does. A request whose client left while it was queued never runs.

Each request's events (text pieces, then its end) are put on an asyncio queue of the server's event
loop with ``call_soon_threadsafe``, so the HTTP side never blocks on the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from legaltune.errors import InputError
from legaltune.generate.answers import stop_token_ids
from legaltune.serve.rows import CANCELLED, Row, RowStopper


class Busy(RuntimeError):
    """The queue is full: the client should retry later (HTTP 429)."""


class Closed(RuntimeError):
    """The engine is shutting down or its worker died (HTTP 503)."""


@dataclass(frozen=True)
class Sampling:
    """What must be equal for two requests to share one ``generate`` call."""

    variant: str  # a served model id
    temperature: float  # 0 = greedy
    top_p: float
    seed: int | None  # a seeded request runs alone: the seed fixes the whole batch's random stream

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0


@dataclass
class Ticket:
    """One admitted request: its prompt, limits, and the queue its events arrive on."""

    id: int
    prompt_ids: list[int]
    max_tokens: int
    stop: tuple[str, ...]
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        """The client left: stop generating for it at the next step (or never start)."""
        self.cancelled.set()

    def _send(self, *event: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the server is gone, nobody listens
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@dataclass
class Variant:
    """A served model id: the run with its adapter, or the same weights with the adapter disabled."""

    id: str
    adapter: bool


class Engine:
    """Owns the model; ``submit`` queues a request, a worker thread runs batches until ``close``."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        variants: list[Variant],
        *,
        end_of_turn: str | None = None,
        max_batch_size: int = 8,
        max_pending: int = 32,
        batch_wait_s: float = 0.01,
    ):
        if max_batch_size < 1 or max_pending < 1:
            raise InputError("max_batch_size and max_pending must be at least 1")
        self.model, self.tokenizer = model, tokenizer
        self.variants = {v.id: v for v in variants}
        self.stops = set(stop_token_ids(tokenizer, end_of_turn))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.stops)
        self.max_batch_size, self.max_pending, self.batch_wait_s = max_batch_size, max_pending, batch_wait_s
        self.context_length = getattr(model.config, "max_position_embeddings", None) or 2048
        self._queue: deque[Ticket] = deque()
        self._lock = threading.Condition()
        self._in_flight = 0
        self._ids = itertools.count(1)
        self._closing = False
        self._error: BaseException | None = None
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0, "batches": 0, "tokens": 0}
        self._largest_batch = 0
        self._thread = threading.Thread(target=self._work, name="legaltune-engine", daemon=True)

    # -- the HTTP side -------------------------------------------------------------------------------
    def start(self) -> None:
        self.model.eval()
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new requests, cancel queued ones, let the running batch end, and stop the worker."""
        with self._lock:
            self._closing = True
            for ticket in self._queue:
                ticket._send("error", "the server is shutting down")
                ticket.cancel()
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(
        self,
        prompt_ids: list[int],
        *,
        max_tokens: int,
        sampling: Sampling,
        stop: tuple[str, ...] = (),
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Ticket:
        """Admit a request or raise ``Busy`` / ``Closed``; never blocks."""
        loop = loop or asyncio.get_running_loop()
        with self._lock:
            if self._closing or self._error is not None or not self._thread.is_alive():
                raise Closed(
                    "the server is shutting down" if self._closing else f"the engine failed: {self._error}"
                )
            if self._in_flight >= self.max_pending:
                raise Busy(
                    f"{self._in_flight} requests are already queued or generating (the bound is "
                    f"{self.max_pending}); retry shortly"
                )
            ticket = Ticket(next(self._ids), prompt_ids, max_tokens, stop, sampling, loop)
            self._in_flight += 1
            self._queue.append(ticket)
            self._lock.notify()
        return ticket

    def stats(self) -> dict[str, Any]:
        with self._lock:
            queued = len(self._queue)
            return {
                "queued": queued,
                "generating": self._in_flight - queued,
                "max_pending": self.max_pending,
                "max_batch_size": self.max_batch_size,
                "largest_batch": self._largest_batch,
                **self.counts,
            }

    @property
    def healthy(self) -> bool:
        return self._thread.is_alive() and self._error is None and not self._closing

    # -- the worker ----------------------------------------------------------------------------------
    def _release(self, outcome: str) -> None:
        with self._lock:
            self._in_flight -= 1
            self.counts[outcome] += 1

    def _take_batch(self) -> list[Ticket] | None:
        """The oldest live ticket and the queued ones that can share its call; None when closing."""
        with self._lock:
            while not self._queue and not self._closing:
                self._lock.wait()
            if self._closing and not self._queue:
                return None
        if self.batch_wait_s and len(self._queue) < self.max_batch_size:
            time.sleep(self.batch_wait_s)  # let requests sent together arrive together
        with self._lock:
            batch: list[Ticket] = []
            kept: deque[Ticket] = deque()
            while self._queue:
                ticket = self._queue.popleft()
                if ticket.cancelled.is_set():
                    self._in_flight -= 1  # its client left while it waited: free the slot, never run it
                    self.counts["cancelled"] += 1
                    continue
                fits = not batch or (
                    ticket.sampling == batch[0].sampling
                    and ticket.sampling.seed is None
                    and len(batch) < self.max_batch_size
                )
                (batch if fits else kept).append(ticket)
            self._queue = kept
            return batch

    def _work(self) -> None:
        try:
            while True:
                batch = self._take_batch()
                if batch is None:
                    return
                if batch:
                    self._run(batch)
        except BaseException as exc:  # a bug in the worker: refuse new work rather than hang clients
            self._error = exc
            with self._lock:
                for ticket in self._queue:
                    ticket._send("error", f"the engine stopped: {exc}")
            raise

    def _run(self, batch: list[Ticket]) -> None:
        rows = [
            Row(
                t.max_tokens,
                t.stop,
                emit=lambda text, t=t: t._send("text", text),
                is_cancelled=t.cancelled.is_set,
                on_end=lambda row, t=t: self._finished(t, row),
            )
            for t in batch
        ]
        with self._lock:
            self.counts["batches"] += 1
            self._largest_batch = max(self._largest_batch, len(batch))
        try:
            self._generate(batch, rows)
        except Exception as exc:  # e.g. out of memory: these requests fail, the server goes on
            for ticket, row in zip(batch, rows, strict=True):
                if not row.done:
                    row.finish_reason = "error"
                    self._release("failed")
                    ticket._send("error", f"generation failed: {type(exc).__name__}: {exc}")
            return
        for row in rows:
            row.finish("length")  # generate stopped at its overall limit before the row's own check

    def _finished(self, ticket: Ticket, row: Row) -> None:
        if row.finish_reason == CANCELLED:
            self._release("cancelled")
            return
        with self._lock:
            self.counts["tokens"] += len(row.tokens)
        # the slot is free before the client hears the end, so its next request is never refused for it
        self._release("completed")
        ticket._send("end", row.finish_reason, row.text, len(row.tokens))

    @torch.no_grad()
    def _generate(self, batch: list[Ticket], rows: list[Row]) -> None:
        width = max(len(t.prompt_ids) for t in batch)
        device = next(self.model.parameters()).device
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, ticket in enumerate(batch):  # left padding: every row continues from the right edge
            ids[i, width - len(ticket.prompt_ids) :] = torch.tensor(ticket.prompt_ids)
            mask[i, width - len(ticket.prompt_ids) :] = 1
        sampling = batch[0].sampling
        kwargs: dict[str, Any] = {"do_sample": sampling.do_sample}
        if sampling.do_sample:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=None)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)  # silence the model's sampling defaults
        use_adapter = self.variants[sampling.variant].adapter
        adapter_off = getattr(self.model, "disable_adapter", None)
        with adapter_off() if (not use_adapter and adapter_off) else contextlib.nullcontext():
            self.model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max(t.max_tokens for t in batch),
                eos_token_id=sorted(self.stops),
                pad_token_id=self.pad_id,
                stopping_criteria=[RowStopper(rows, self.stops, self.tokenizer)],
                **kwargs,
            )
