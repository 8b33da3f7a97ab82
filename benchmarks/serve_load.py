"""A bounded load test of an OpenAI-compatible server: N concurrent clients, each sending R streamed requests.

    python benchmarks/serve_load.py --url http://127.0.0.1:8000/v1 --model RUN_NAME --clients 8 --requests 4

Uses the official `openai` client (streaming, usage included) and reports every request's outcome:
latency (request to last token), time to first token, completion tokens, and the aggregate
throughput (completion tokens / wall time). It sends exactly clients × requests requests, each with a
timeout, and stops by itself: a load test, not a soak. Exit status 1 when any request failed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from typing import Any

PROMPTS = [
    "Thời gian thử việc tối đa là bao lâu?",
    "Người lao động được nghỉ phép năm bao nhiêu ngày?",
    "Tuổi kết hôn của nữ là bao nhiêu?",
    "What is the capital of France?",
    "Công ty nợ lương thì người lao động làm gì?",
    "Hợp đồng lao động có những loại nào?",
]


def one_request(client: Any, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    start = time.perf_counter()
    first = None
    text, usage, finish = [], None, None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                first = first or time.perf_counter()
                text.append(choice.delta.content)
            finish = choice.finish_reason or finish
    end = time.perf_counter()
    return {
        "latency_s": end - start,
        "ttft_s": (first or end) - start,
        "completion_tokens": usage.completion_tokens if usage else 0,
        "finish_reason": finish,
        "answer": "".join(text),
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_load(
    base_url: str,
    model: str,
    *,
    clients: int = 8,
    requests: int = 2,
    max_tokens: int = 32,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """Send clients × requests streamed requests from `clients` threads; return the outcomes and a summary."""
    from openai import OpenAI

    results: list[dict[str, Any]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client_loop(k: int) -> None:
        client = OpenAI(base_url=base_url, api_key="unused", timeout=timeout_s, max_retries=0)
        for r in range(requests):
            prompt = PROMPTS[(k * requests + r) % len(PROMPTS)]
            try:
                out = one_request(client, model, prompt, max_tokens)
            except Exception as exc:  # counted and reported, never hidden
                with lock:
                    errors.append(f"client {k} request {r}: {type(exc).__name__}: {exc}")
                continue
            with lock:
                results.append({"client": k, "request": r, **out})

    start = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s * requests)
    wall = time.perf_counter() - start
    tokens = sum(r["completion_tokens"] for r in results)
    lat = [r["latency_s"] for r in results] or [0.0]
    ttft = [r["ttft_s"] for r in results] or [0.0]
    summary = {
        "clients": clients,
        "requests_sent": clients * requests,
        "answered": len(results),
        "errors": len(errors),
        "wall_s": round(wall, 2),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2) if wall else 0.0,
        "latency_p50_s": round(statistics.median(lat), 2),
        "latency_p95_s": round(_percentile(lat, 0.95), 2),
        "latency_max_s": round(max(lat), 2),
        "ttft_p50_s": round(statistics.median(ttft), 2),
        "per_request_tokens_per_s_p50": round(
            statistics.median([r["completion_tokens"] / r["latency_s"] for r in results]) if results else 0.0,
            2,
        ),
    }
    return {"summary": summary, "results": results, "error_messages": errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1", help="the server's /v1 base URL")
    parser.add_argument("--model", required=True, help="a model id from GET /v1/models")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print every request's outcome as JSON")
    args = parser.parse_args(argv)
    out = run_load(
        args.url, args.model, clients=args.clients, requests=args.requests, max_tokens=args.max_tokens
    )
    print(json.dumps(out if args.json else out["summary"], ensure_ascii=False, indent=2))
    for message in out["error_messages"]:
        print(message, file=sys.stderr)
    return 1 if out["error_messages"] else 0


if __name__ == "__main__":
    sys.exit(main())
