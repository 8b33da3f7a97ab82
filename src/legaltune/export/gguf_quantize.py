"""K-quants (q4_k_m, q5_k_m, …) through llama.cpp's own quantizer.

The ``gguf`` package can write q8_0 and q4/q5_0/1 but not the K-quants, so an f16 GGUF is written
first and requantized by llama.cpp: its ``llama-quantize`` program when it is on PATH, else the
same quantizer through the ``llama-cpp-python`` binding when that is installed. Neither is a
dependency of legaltune; without both, the error says what to install.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from legaltune.export.merge import ExportError

K_QUANTS = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")
Quantizer = Callable[[Path, Path, str], None]


def _with_program(exe: str) -> Quantizer:
    def run(src: Path, dst: Path, kind: str) -> None:
        done = subprocess.run([exe, str(src), str(dst), kind.upper()], capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise ExportError(f"{exe} failed (exit {done.returncode}): " + " / ".join(tail))

    run.__doc__ = exe
    return run


def _with_binding(src: Path, dst: Path, kind: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}")
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if status != 0:
        raise ExportError(f"llama.cpp's quantizer (llama-cpp-python) failed on {src} with status {status}")


_with_binding.__doc__ = "llama-cpp-python"


def find_quantizer(kind: str) -> Quantizer:
    """llama.cpp's quantizer for ``kind``, or an ExportError saying how to get one."""
    exe = shutil.which("llama-quantize")
    if exe:
        return _with_program(exe)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise ExportError(
            f"{kind} is a llama.cpp K-quant: it needs llama.cpp's quantizer, and neither `llama-quantize` is "
            "on PATH nor llama-cpp-python installed. Build llama.cpp (cmake -B build && cmake --build build "
            "--target llama-quantize) and put build/bin on PATH, or `pip install llama-cpp-python`; or export "
            "q4_0, q4_1, q5_0, q5_1 or q8_0, which legaltune writes by itself."
        ) from None
    return _with_binding
