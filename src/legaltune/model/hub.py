"""Whether the Hugging Face Hub can be reached, decided once and fast.

On a machine without the Hub (a cluster node, an air-gapped server) every ``from_pretrained`` of a
hub id retries its requests for about 25 seconds before it fails — or, for a model already in the
local cache, before it falls back to the cached files. A user then waits most of a minute for an
error or for a model they have. So a hub id is resolved here first: when the Hub's host does not
answer within a few seconds, a cached snapshot is loaded from its directory, and an id that is not
cached is an error at once.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

_TIMEOUT_S = 3.0
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@functools.cache
def hub_reachable() -> bool:
    """False when ``HF_HUB_OFFLINE`` is set or the Hub's host (``HF_ENDPOINT``) does not accept a
    connection within 3 s; True behind a proxy (only the proxy can tell)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(name) for name in _PROXY_VARS):
        return True
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=_TIMEOUT_S):
            return True
    except OSError:
        return False


def cached_snapshot(repo_id: str) -> str | None:
    """The local directory of ``repo_id``'s cached snapshot, or None when it is not in the cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


__all__ = ["cached_snapshot", "hub_reachable"]
