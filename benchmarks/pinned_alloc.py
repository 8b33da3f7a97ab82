"""Pinned host memory: first-allocation speed and copy speed, cudaHostAlloc vs registered pages.

The offloaded layers of a run's first step get every pinned buffer they park activations in
(`legaltune.speed.offload`). Each setting runs in its own process (allocator settings are
process-wide): allocate ``--gib`` GiB as ``--mib``-MiB tensors, then copy a GPU tensor into each
(non-blocking, as the offloader does) and time both. The PyTorch rows use its pinned allocator
(cudaHostAlloc by default, or malloc + page-touch threads + cudaHostRegister); the arena rows use
legaltune's arena (`legaltune.speed.pinned_arena`: 2 GiB mmap blocks faulted in on up to 16
threads, then registered), with and without transparent huge pages.

    python3 benchmarks/pinned_alloc.py --gib 8 --out $OUT/pinned_alloc.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

SETTINGS = {
    "cudaHostAlloc (default)": "",
    "register, 1 thread": "pinned_use_cuda_host_register:True,pinned_num_register_threads:1",
    "register, 8 threads (legaltune)": "pinned_use_cuda_host_register:True,pinned_num_register_threads:8",
    "register, 16 threads": "pinned_use_cuda_host_register:True,pinned_num_register_threads:16",
    "arena, huge pages (legaltune)": "arena",
    "arena, 4 KiB pages": "arena-4k",
}


def _arena(huge_pages: bool):
    import functools

    from legaltune.speed.pinned_arena import PinnedArena, register_block

    return PinnedArena(allocate=functools.partial(register_block, huge_pages=huge_pages))


def child(settings: str, gib: float, mib: int) -> dict:
    import torch

    arena = _arena(settings == "arena") if settings.startswith("arena") else None
    if settings and arena is None:
        torch.cuda.memory._set_allocator_settings(settings)
    n = max(1, int(gib * 1024 / mib))
    src = torch.empty(mib << 20, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    start = time.perf_counter()
    if arena is None:
        hosts = [torch.empty(mib << 20, dtype=torch.uint8, pin_memory=True) for _ in range(n)]
    else:
        hosts = [arena.take(src) for _ in range(n)]
    alloc_s = time.perf_counter() - start
    start = time.perf_counter()
    for h in hosts:
        h.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    copy_s = time.perf_counter() - start
    total = n * mib / 1024
    pinned = all(h.is_pinned() for h in hosts[:4])
    return {"gib": total, "is_pinned": pinned, "alloc_s": round(alloc_s, 3), "alloc_gib_per_s": round(total / alloc_s, 2),
            "copy_gib_per_s": round(total / copy_s, 2)}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gib", type=float, default=8)
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--out")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child is not None:
        print(json.dumps(child(a.child, a.gib, a.mib)))
        return 0
    rows = {}
    for name, settings in SETTINGS.items():
        cmd = [sys.executable, __file__, "--child", settings, "--gib", str(a.gib), "--mib", str(a.mib)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        rows[name] = (
            json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else done.stderr[-600:]
        )
        print(name, rows[name], flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
