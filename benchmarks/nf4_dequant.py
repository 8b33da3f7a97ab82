"""NF4 dequantization: bitsandbytes vs legaltune's Triton kernel, at Llama-3.1-8B's weight shapes.

The fused LoRA path dequantizes each 4-bit projection weight just before its matmul (~16 times
per layer and step), so this kernel's bandwidth is part of every QLoRA step. Prints time and
effective bandwidth (packed weight + scales read, dense weight written) per shape, with and without
double-quantized scales, side by side in one process, plus a JSON line.

    python3 benchmarks/nf4_dequant.py [--repeats 20] [--sweep] [--launch]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

SHAPES = {"q/o": (4096, 4096), "k/v": (1024, 4096), "gate/up": (14336, 4096), "down": (4096, 14336)}


def main() -> None:
    import bitsandbytes.functional as bnbf
    import torch

    from legaltune.speed.nf4 import dequantize_nf4, triton_nf4_supported

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--sweep", action="store_true", help="also time the kernel's block/warp settings")
    ap.add_argument(
        "--launch", action="store_true", help="also time the CPU cost of a launch, direct vs Triton's JIT"
    )
    args = ap.parse_args()
    torch.manual_seed(0)

    def median_s(fn) -> float:  # noqa: ANN001
        for _ in range(5):
            fn()
        times = []
        for _ in range(args.repeats):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(10):  # queued back to back, as in a step: GPU time, not launch latency
                fn()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) / 10)
        return statistics.median(times)

    rows = []
    for nested in (True, False):
        for name, shape in SHAPES.items():
            w = torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 0.02
            packed, state = bnbf.quantize_4bit(w, quant_type="nf4", compress_statistics=nested)
            assert triton_nf4_supported(packed, state, torch.bfloat16)
            moved = packed.numel() + state.absmax.numel() * state.absmax.element_size() + w.numel() * 2
            bnb_s = median_s(lambda packed=packed, state=state: bnbf.dequantize_4bit(packed, state))
            ours_s = median_s(
                lambda packed=packed, state=state: dequantize_nf4(packed, state, torch.bfloat16)
            )
            row = {
                "shape": name,
                "nested": nested,
                "bnb_us": 1e6 * bnb_s,
                "triton_us": 1e6 * ours_s,
                "bnb_gbps": moved / bnb_s / 1e9,
                "triton_gbps": moved / ours_s / 1e9,
            }
            rows.append(row)
            print(
                f"{name:8} {shape!s:14} double-quant={nested!s:5}  bitsandbytes {row['bnb_us']:7.1f} us "
                f"({row['bnb_gbps']:6.0f} GB/s)  triton {row['triton_us']:7.1f} us ({row['triton_gbps']:6.0f} GB/s)"
                f"  x{bnb_s / ours_s:.2f}",
                flush=True,
            )
    if args.sweep:
        from legaltune.speed import nf4

        w = torch.randn(SHAPES["gate/up"], device="cuda", dtype=torch.bfloat16) * 0.02
        packed, state = bnbf.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
        moved = packed.numel() + state.absmax.numel() + w.numel() * 2
        for block in (1024, 2048, 4096, 8192, 16384):
            for warps in (2, 4, 8, 16):

                def run(b: int = block, nw: int = warps) -> torch.Tensor:
                    return nf4._launch(packed, state, torch.bfloat16, b, nw)

                sec = median_s(run)
                rows.append({"sweep_block": block, "warps": warps, "us": 1e6 * sec})
                print(
                    f"sweep gate/up block {block:6} warps {warps:2}: {1e6 * sec:6.1f} us ({moved / sec / 1e9:5.0f} GB/s)"
                )
    if args.launch:
        from legaltune.speed import nf4

        # A tiny weight: the GPU finishes each kernel in microseconds, so the loop times the CPU.
        w = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
        packed, state = bnbf.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
        for direct in (True, False, True, False):
            nf4.DIRECT_LAUNCH[0] = direct
            for _ in range(50):
                dequantize_nf4(packed, state, torch.bfloat16)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(2000):
                dequantize_nf4(packed, state, torch.bfloat16)
            torch.cuda.synchronize()
            us = (time.perf_counter() - t0) / 2000 * 1e6
            rows.append({"launch": "direct" if direct else "triton-jit", "cpu_us_per_call": us})
            print(
                f"launch {'direct' if direct else 'triton jit':10}: {us:6.1f} us of CPU per dequantize_nf4 call"
            )
        nf4.DIRECT_LAUNCH[0] = True
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}))


if __name__ == "__main__":
    main()
