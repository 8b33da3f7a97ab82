"""Causal attention forward and forward+backward time per SDPA backend, at the benchmark's shapes.

The decoder layers call ``scaled_dot_product_attention(..., is_causal=True, enable_gqa=True)``
(transformers does when there is no mask), and PyTorch picks the first backend in its priority list
that accepts the inputs. This times each backend alone (flash, cuDNN, memory-efficient), with the
grouped k/v heads as they are (``enable_gqa``) and expanded to all query heads, so the choice is
made from numbers on this GPU. Prints a table and one JSON line.

    python3 benchmarks/attention_backends.py [--shapes 2048x4,8192x1] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="2048x4,8192x1")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    backends = {
        "default": None,
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
    }
    results = []
    for shape in args.shapes.split(","):
        seq, batch = (int(v) for v in shape.split("x"))
        q = torch.randn(batch, args.heads, seq, args.head_dim, device="cuda", dtype=torch.bfloat16)
        kv = [
            torch.randn(batch, args.kv_heads, seq, args.head_dim, device="cuda", dtype=torch.bfloat16)
            for _ in range(2)
        ]
        rep = args.heads // args.kv_heads
        for gqa in (True, False):
            k, v = kv if gqa else (t.repeat_interleave(rep, dim=1) for t in kv)
            qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
            grad = torch.randn_like(q)
            for name, backend in backends.items():

                def run(backward: bool, backend=backend, qq=qq, kk=kk, vv=vv, gqa=gqa, grad=grad):  # noqa: ANN001, ANN202
                    ctx = sdpa_kernel(backend) if backend is not None else torch.enable_grad()
                    with ctx:
                        out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, enable_gqa=gqa)
                    if backward:
                        out.backward(grad)

                row = {"seq": seq, "batch": batch, "gqa": gqa, "backend": name}
                try:
                    for backward in (False, True):
                        for _ in range(3):
                            run(backward)
                        times = []
                        for _ in range(args.repeats):
                            torch.cuda.synchronize()
                            t0 = time.perf_counter()
                            run(backward)
                            torch.cuda.synchronize()
                            times.append(time.perf_counter() - t0)
                        row["fwd_bwd_ms" if backward else "fwd_ms"] = 1e3 * statistics.median(times)
                except RuntimeError as exc:  # the backend refuses these inputs
                    row["error"] = str(exc).splitlines()[0][:120]
                results.append(row)
                print(
                    f"{seq}x{batch} gqa={gqa!s:5} {name:9} "
                    + (
                        f"fwd {row['fwd_ms']:7.2f} ms  fwd+bwd {row['fwd_bwd_ms']:7.2f} ms"
                        if "error" not in row
                        else f"unsupported: {row['error']}"
                    ),
                    flush=True,
                )
    print(json.dumps({"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "rows": results}))


if __name__ == "__main__":
    main()
