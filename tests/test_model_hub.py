"""Hub ids on a machine that cannot reach the Hub: a cached snapshot loads at once, an uncached id is
an error at once (not after ~25 s of retries per request)."""

from __future__ import annotations

import socket
import time

import pytest

from legaltune.model import hub
from legaltune.model.arch import ModelNameError
from legaltune.model.load import resolve_model_path


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_ENDPOINT", *hub._PROXY_VARS):
        monkeypatch.delenv(name, raising=False)
    hub.hub_reachable.cache_clear()
    yield
    hub.hub_reachable.cache_clear()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_reachable_follows_the_endpoint_offline_flag_and_proxies(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub.hub_reachable()
    hub.hub_reachable.cache_clear()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert not hub.hub_reachable()
    hub.hub_reachable.cache_clear()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # only the proxy can tell
    assert hub.hub_reachable()
    hub.hub_reachable.cache_clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hub.hub_reachable()


def test_unreachable_hub_and_an_uncached_id_is_an_error_at_once(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    start = time.perf_counter()
    with pytest.raises(ModelNameError, match="unreachable") as info:
        resolve_model_path("some-org/some-model")
    assert time.perf_counter() - start < 10
    assert "smollm2-135m-instruct" in str(info.value)  # what works offline


def test_unreachable_hub_loads_a_cached_snapshot_from_its_directory(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    repo = tmp_path / "models--some-org--some-model"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_path("some-org/some-model") == str(snapshot)
