"""Writes that are never seen half-done, and full-disk errors that name the path and the free space.

Every file or directory legaltune hands to a user (adapter, summary, eval, report, merged model,
GGUF, checkpoints) is written under a temporary name beside its final one, flushed to disk and
renamed into place; a crash, kill or full disk leaves the old version or nothing, never a
truncated file under the final name. A write that fails for lack of space raises
``DiskFullError`` naming the path and how much space is left, whichever library did the writing
(Python's own files report errno 28, safetensors "os error 28", torch.save only "unexpected pos").
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from legaltune.errors import UserError

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_TEXT = ("no space left on device", "os error 28", "storagefull", "disk quota exceeded", "errno 28")
# torch.save's writer reports a short write only as "[enforce fail at inline_container.cc] unexpected
# pos"; it counts as a full disk when the file system is (nearly) out of space afterwards.
_TORCH_WRITE_TEXT = ("inline_container.cc", "pytorchstreamwriter")
_NEARLY_FULL = 64 * 2**20


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def as_created(path: str | Path, *, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``open()`` / ``mkdir()`` would have (0644 / 0755 under umask
    022): ``tempfile`` makes its files 0600 and directories 0700, and safetensors writes 0600, so
    that a staged write would otherwise be the one file of a run that others cannot read."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest existing parent (a file system to ask about free space)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_space(path: Path) -> tuple[int, int]:
    """(free, total) bytes of the file system that holds ``path``."""
    usage = shutil.disk_usage(existing_ancestor(path))
    return usage.free, usage.total


class DiskFullError(UserError, OSError):
    """No space left while writing ``path``; the message gives the free space and the fix."""

    def __init__(self, path: Path, what: str, hint: str = ""):
        super().__init__(errno.ENOSPC, "No space left on device")
        self.path, self.what, self.hint = Path(path), what, hint
        self.free_at_failure = free_space(self.path)[0]

    def __str__(self) -> str:
        # measured again when shown: the failed write's temporary files are gone by then
        free, total = free_space(self.path)
        now = (
            ""
            if free == self.free_at_failure
            else f", {human_bytes(free)} once the unfinished write was removed"
        )
        return (
            f"no space left on device while writing {self.what} {self.path} "
            f"({human_bytes(self.free_at_failure)} free of {human_bytes(total)} on the file system of "
            f"{existing_ancestor(self.path)}{now}); free some space, or write elsewhere"
            + (f"; {self.hint}" if self.hint else "")
        )


def is_disk_full(exc: BaseException, path: Path) -> bool:
    """Whether ``exc`` (from any writer) means the file system of ``path`` ran out of space."""
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    text = str(exc).lower()
    if any(t in text for t in _FULL_TEXT):
        return True
    if any(t in text for t in _TORCH_WRITE_TEXT):
        return free_space(path)[0] < _NEARLY_FULL
    return False


@contextlib.contextmanager
def disk_errors(path: Path, what: str = "file", hint: str = "") -> Iterator[None]:
    """Turn a full-disk failure of any writer inside the block into a ``DiskFullError`` for ``path``."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        if is_disk_full(exc, Path(path)):
            raise DiskFullError(Path(path), what, hint) from exc
        raise


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (before it is renamed into place)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


@contextlib.contextmanager
def staged_file(path: Path, what: str = "file", hint: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends cleanly it becomes ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with disk_errors(path, what, hint):
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            as_created(tmp)
            os.replace(tmp, path)
            fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def scratch_file(beside: Path, tag: str) -> Iterator[Path]:
    """Yield a temporary path beside ``beside`` for an intermediate file (e.g. the f16 GGUF that a
    quantizer reads); it is removed when the block ends, however it ends."""
    beside = Path(beside)
    fd, name = tempfile.mkstemp(prefix=f".{beside.name}.", suffix=f".{tag}.partial", dir=beside.parent)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str, what: str = "file", hint: str = "") -> Path:
    with staged_file(path, what, hint) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(
    path: Path, data: Any, what: str = "file", hint: str = "", *, allow_nan: bool = False
) -> Path:
    """JSON (UTF-8, indented; no NaN unless allowed) via a temp file + rename: readers never see half of it."""
    text = json.dumps(data, ensure_ascii=False, indent=2, allow_nan=allow_nan)
    return write_text_atomic(path, text, what, hint)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished temporary directory to ``final``, replacing what is there; its files and
    directories get the modes plain writes would have (see :func:`as_created`)."""
    for inner in tmp.rglob("*"):
        as_created(inner, directory=inner.is_dir())
    as_created(tmp, directory=True)
    old: Path | None = None
    if final.exists():
        # Move the old one aside first so that a failed rename never loses both versions.
        old = final.with_name(f".{final.name}.old-{tmp.name}")
        final.rename(old)
    tmp.rename(final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(path: Path, what: str = "directory", hint: str = "") -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; when the block ends cleanly it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with disk_errors(path, what, hint):
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
        try:
            yield tmp
            fsync_tree(tmp)
            replace_dir(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
