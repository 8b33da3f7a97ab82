"""`legaltune serve` as a user runs it: a real server process on a localhost port, the official `openai`
client (streaming included), raw HTTP for malformed input, a disconnect mid-stream, a full queue, and a
bounded load test whose latency and tokens/s are printed (`pytest -s` shows them).

One server for the module: the embedded SmolLM2 with a small random adapter, batch ≤ 4, queue ≤ 6.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import load_benchmark
from tests.servers import http, make_embedded_run, running

openai = pytest.importorskip("openai", reason="the openai client is a test dependency (pip install openai)")

MAX_PENDING, MAX_BATCH = 6, 4
QUESTION = "What is the capital of France?"
# Sampling at a high temperature keeps a 135M model from reaching its end-of-turn token early: a long answer.
LONG = {"temperature": 2.0, "seed": 7}


@pytest.fixture(scope="module")
def run(tmp_path_factory, embedded_dir) -> Path:
    return make_embedded_run(tmp_path_factory.mktemp("serve"), embedded_dir)


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    args = ["serve", "--run", str(run), "--max-batch-size", str(MAX_BATCH), "--max-pending", str(MAX_PENDING)]
    args += ["--threads", "1"]  # the CI machine's 2 cores are shared with the test process
    with running([*args, "--citations"], log=log) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


def health(server: str) -> dict:
    status, body = http("GET", f"{server}/health")
    assert status == 200, body
    return body


def wait_idle(server: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = health(server)
        if body["queued"] == 0 and body["generating"] == 0:
            return body
        assert time.monotonic() < deadline, f"the server is still busy after {timeout} s: {body}"
        time.sleep(0.1)


def test_models_and_health(client, server, run):
    ids = [m.id for m in client.models.list().data]
    assert ids == [run.name, f"{run.name}:base"]
    assert client.models.retrieve(run.name).owned_by == "legaltune"
    body = health(server)
    assert (
        body["status"] == "ok" and body["max_pending"] == MAX_PENDING and body["max_batch_size"] == MAX_BATCH
    )
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.models.retrieve("gpt-4o")


def test_answer_is_legaltunes_own_greedy_answer(client, run):
    """The server formats the prompt as the run was trained and decodes greedily: its answer is exactly
    what `legaltune generate` writes for the same question, for the tuned and the base variant."""
    from legaltune.generate.answers import generate_answers
    from legaltune.generate.load import load_generator
    from legaltune.generate.rows import row_messages

    gen = load_generator(run_dir=run)
    convo = row_messages({"question": QUESTION}, gen)

    def answer():
        kw = {"chat_template": gen.template, "end_of_turn": gen.end_of_turn}
        return generate_answers(gen.model, gen.tokenizer, [convo], max_new_tokens=24, **kw)[0]

    expected = answer()
    with gen.model.disable_adapter():
        expected_base = answer()
    for model_id, want in [(run.name, expected), (f"{run.name}:base", expected_base)]:
        out = client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": QUESTION}], max_tokens=24
        )
        choice = out.choices[0]
        assert choice.message.content == want.text
        assert choice.finish_reason == ("stop" if want.stopped else "length")
        assert out.usage.completion_tokens == want.new_tokens
        assert out.usage.prompt_tokens > 20  # the run's system prompt is in front of the question
    assert "Paris" in expected.text


# The 135M model copies an English instruction's quote reliably; the answer then cites an article.
CITING = 'Repeat this text exactly: "Điều 35 Bộ luật Lao động 2019"'


@pytest.fixture(scope="module")
def verifier(run):
    from legaltune.generate.load import load_generator

    return load_generator(run_dir=run).verifier()


def test_stream_matches_whole_answer_with_usage_and_citations(client, run, verifier):
    messages = [{"role": "user", "content": CITING}]
    whole = client.chat.completions.create(model=run.name, messages=messages, max_tokens=40)
    stream = client.chat.completions.create(
        model=run.name, messages=messages, max_tokens=40, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3  # streamed token by token, not in one piece
    answer = whole.choices[0].message.content
    assert "".join(pieces) == answer
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # --citations: each citation of the answer resolved against the law corpus, the law taken from the question
    expected = [{**c.to_dict(), "line": c.describe()} for c in verifier.check(answer, CITING)]
    assert (
        whole.model_extra["citations"]
        == finals[0].model_extra["citations"]
        == json.loads(json.dumps(expected))
    )
    print(f"\nanswer: {answer!r}\ncitations: {[c['line'] for c in expected]}")
    assert (
        expected and expected[0]["article"] == 35 and expected[0]["title"]
    )  # the model copied it; it exists


def test_limits_and_stop_strings(client, run):
    short = client.chat.completions.create(
        model=run.name, messages=[{"role": "user", "content": QUESTION}], max_tokens=3
    )
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    cut = client.chat.completions.create(
        model=run.name, messages=[{"role": "user", "content": QUESTION}], max_tokens=24, stop=[" Paris"]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == "The capital of France is"
    streamed = client.chat.completions.create(
        model=run.name,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=24,
        stop=" Paris",
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == "The capital of France is"  # the held-back start of the stop string is never sent


BAD_REQUESTS = [
    ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": "{run}", "messages": []}, "messages"),
    ({"model": "{run}", "messages": [{"role": "robot", "content": "hi"}]}, "role"),
    ({"model": "{run}", "messages": [{"role": "user", "content": "hi"}], "n": 2}, "'n'"),
    ({"model": "{run}", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature"),
    ({"model": "{run}", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "{run}", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}, "context"),
    (
        {"model": "{run}", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
        "tools",
    ),
    ({"model": "{run}", "messages": [{"role": "user", "content": "hi"}], "frobnicate": 1}, "frobnicate"),
    ({"model": "{run}", "messages": [{"role": "assistant", "content": "hi"}]}, "last message"),
    ({"model": "{run}", "messages": [{"role": "user", "content": 5}]}, "content"),
    ({"model": "{run}", "messages": [{"role": "user", "content": "hi"}], "stop": ["a"] * 5}, "stop"),
]


@pytest.mark.parametrize(("body", "named"), BAD_REQUESTS, ids=[b[1] for b in BAD_REQUESTS])
def test_bad_requests_get_a_400_naming_the_problem(server, run, body, named):
    body = json.loads(json.dumps(body).replace("{run}", run.name))
    status, answer = http("POST", f"{server}/v1/chat/completions", body)
    assert status == 400, answer
    assert answer["error"]["type"] == "invalid_request_error"
    assert named in answer["error"]["message"]


def test_malformed_input_never_kills_the_server(server, client, run):
    cases = [
        (b"{not json", 400),
        (b"\xff\xfe\x00garbage", 400),
        (b"[1, 2, 3]", 400),
        (b"", 400),
    ]
    for raw, want in cases:
        status, answer = http("POST", f"{server}/v1/chat/completions", raw)
        assert status == want and "error" in answer, (raw, status, answer)
    assert http("GET", f"{server}/v1/nope")[0] == 404
    assert http("GET", f"{server}/v1/chat/completions")[0] == 405
    host, port = server.removeprefix("http://").split(":")
    # a body announced larger than the limit is refused before it is read
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5242880\r\n\r\n"
        )
        reply = b""
        while b"byte limit" not in reply and (piece := sock.recv(65536)):
            reply += piece
        reply = reply.decode("utf-8", "replace")
    assert reply.startswith("HTTP/1.1 413") and "byte limit" in reply
    # bytes that are not HTTP at all, and a connection dropped halfway through a request
    for junk in (
        b"\x16\x03\x01\x02\x00garbage\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{",
    ):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(junk)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=run.name, messages=[{"role": "tool", "content": "x"}])
    assert (
        client.chat.completions.create(
            model=run.name, messages=[{"role": "user", "content": QUESTION}], max_tokens=2
        )
        .choices[0]
        .message.content
    )


def test_disconnect_mid_stream_frees_the_slot(server, client, run):
    wait_idle(server)
    before = health(server)
    stream = client.chat.completions.create(
        model=run.name, messages=[{"role": "user", "content": QUESTION}], max_tokens=400, stream=True, **LONG
    )
    got = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            got.append(chunk.choices[0].delta.content)
        if len(got) >= 3:
            break
    started = time.monotonic()
    stream.close()  # the client goes away with ~397 tokens still to generate
    after = wait_idle(server, timeout=10)
    freed_in = time.monotonic() - started
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["completed"] == before["completed"]
    assert after["tokens"] == before["tokens"]  # nothing was counted as answered for it
    # 400 tokens take tens of seconds here; the slot came back within a few decoding steps
    print(f"\nslot freed {freed_in:.2f} s after the client disconnected")
    assert freed_in < 5


def test_full_queue_answers_429_at_once_and_recovers(server, client, run):
    wait_idle(server)
    outcomes: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        start = time.monotonic()
        try:
            client.chat.completions.create(
                model=run.name,
                messages=[{"role": "user", "content": QUESTION}],
                max_tokens=40,
                temperature=2.0,
            )
            result = "ok"
        except openai.RateLimitError as exc:
            assert "retry" in str(exc) and time.monotonic() - start < 5  # refused at once, not after a wait
            result = "429"
        except Exception as exc:  # noqa: BLE001 - any other outcome fails the test below
            result = f"{type(exc).__name__}: {exc}"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=one) for _ in range(MAX_PENDING + 3)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join(300)
    assert sorted(set(outcomes)) == ["429", "ok"], outcomes
    assert outcomes.count("ok") >= MAX_PENDING
    wait_idle(server)
    assert (
        client.chat.completions.create(
            model=run.name, messages=[{"role": "user", "content": QUESTION}], max_tokens=2
        )
        .choices[0]
        .message.content
    )


def load_module():
    return load_benchmark("serve_load.py")


def test_bounded_load_every_request_answered(server, run):
    wait_idle(server)
    load = load_module()
    out = load.run_load(
        f"{server}/v1", run.name, clients=MAX_PENDING, requests=2, max_tokens=16, timeout_s=180
    )
    summary = out["summary"]
    print("\nload test:", json.dumps(summary))
    assert out["error_messages"] == []
    assert summary["answered"] == summary["requests_sent"] == 2 * MAX_PENDING
    assert all(r["completion_tokens"] > 0 and r["answer"] for r in out["results"])
    assert summary["tokens_per_s"] > 0
    assert health(server)["largest_batch"] > 1  # concurrent requests were generated together
