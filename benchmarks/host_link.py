"""Pinned host <-> GPU copy bandwidth, alone and beside compute: what offloading activations can move.

Offloaded checkpointing hides its copies behind compute only while the link keeps up: at 8k
tokens one Llama-3.1-8B layer input is 64 MiB, and a layer's forward takes ~8 ms on an H100. This
prints GB/s for device-to-host, host-to-device, both directions at once, and device-to-host while a
bf16 GEMM loop runs on the compute stream (and that loop's TFLOP/s with and without the copies).

    python3 benchmarks/host_link.py [--mib 64] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    n = args.mib << 20
    dev = torch.empty(n, dtype=torch.uint8, device="cuda")
    dev2 = torch.empty(n, dtype=torch.uint8, device="cuda")
    host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    host2 = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    a = torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(14336, 4096, device="cuda", dtype=torch.bfloat16)

    def timed(fn) -> float:  # noqa: ANN001
        times = []
        for _ in range(5):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def copies(d2h: bool, h2d: bool) -> None:
        for _ in range(args.repeats):
            if d2h:
                with torch.cuda.stream(s1):
                    host.copy_(dev, non_blocking=True)
            if h2d:
                with torch.cuda.stream(s2):
                    dev2.copy_(host2, non_blocking=True)

    def gemms() -> None:
        for _ in range(args.repeats * 4):
            a @ w.t()

    gb = n * args.repeats / 1e9
    flops = 2 * 8192 * 4096 * 14336 * args.repeats * 4
    res = {
        "d2h_gbs": gb / timed(lambda: copies(True, False)),
        "h2d_gbs": gb / timed(lambda: copies(False, True)),
        "both_each_gbs": gb / timed(lambda: copies(True, True)),
        "gemm_tflops": flops / timed(gemms) / 1e12,
    }

    def together() -> None:
        copies(True, True)
        gemms()

    t = timed(together)
    res["gemm_with_copies_tflops"] = flops / t / 1e12
    res["mib"] = args.mib
    res["gpu"] = torch.cuda.get_device_name()
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in res.items()}))


if __name__ == "__main__":
    main()
