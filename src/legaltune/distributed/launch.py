"""`legaltune train CONFIG --nproc N`: torchrun, started from inside legaltune.

The command re-executes itself once per rank through torch.distributed.run's own API (the code
behind the ``torchrun`` command): every process runs ``python -m legaltune.cli train …`` with the
same arguments minus the launch flags, and finds its rank in the environment torchrun sets. So
``legaltune train --nproc 2``, ``torchrun --nproc-per-node 2 -m legaltune.cli train …`` and
``accelerate launch --num-processes 2 -m legaltune.cli train …`` run the same code.

Several machines: the same command on each, with ``--nnodes``, ``--node-rank`` and the
``--rdzv-endpoint HOST:PORT`` of node 0 (torchrun's static rendezvous); without ``--node-rank``,
torchrun's c10d rendezvous hands out node ranks itself (all nodes give the same ``--rdzv-id``).
"""

from __future__ import annotations

import argparse
import os
import sys

from legaltune.errors import UserError

# legaltune's launch flags → whether they take a value; stripped from the command each rank runs
LAUNCH_FLAGS = {
    "--nproc": True,
    "--nnodes": True,
    "--node-rank": True,
    "--rdzv-endpoint": True,
    "--rdzv-id": True,
}
# Workers get this long to finish their step, save a checkpoint and exit after a Ctrl-C before
# torchrun kills them (torchrun's own default, 30 s, is shorter than one long-context step).
SHUTDOWN_TIMEOUT_S = 300
EXIT_USAGE = 2


class LaunchError(UserError):
    """A launch flag combination that cannot work; the message says which flags and why."""


def add_launch_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("several GPUs or machines (torchrun)")
    g.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train on N processes on this machine (one per GPU), launched through torchrun",
    )
    g.add_argument("--nnodes", type=int, default=1, metavar="N", help="machines in the run")
    g.add_argument(
        "--node-rank",
        type=int,
        metavar="R",
        help="this machine's number, 0 … nnodes-1 (node 0 hosts --rdzv-endpoint); omit to let torchrun's "
        "c10d rendezvous number the machines",
    )
    g.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="address of node 0 that every machine can reach (with --nnodes > 1), e.g. node0.cluster:29500",
    )
    g.add_argument(
        "--rdzv-id",
        default="legaltune",
        help="run id shared by all machines (c10d rendezvous)",
    )


def strip_launch_flags(argv: list[str]) -> list[str]:
    """``argv`` without legaltune's launch flags (``--nproc 2`` and ``--nproc=2`` alike)."""
    out: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if name in LAUNCH_FLAGS:
            skip = LAUNCH_FLAGS[name] and "=" not in token
            continue
        out.append(token)
    return out


def wants_launch(args: argparse.Namespace) -> bool:
    return args.nproc is not None or args.nnodes != 1


def torchrun_argv(args: argparse.Namespace, command: list[str]) -> list[str]:
    """The torchrun arguments that run ``python -m legaltune.cli COMMAND`` per rank."""
    if os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("WORLD_SIZE"):
        raise LaunchError(
            "--nproc/--nnodes: this process was already started by a launcher (torchrun or accelerate "
            "launch); drop the launch flags, or launch with legaltune train --nproc alone"
        )
    nproc = args.nproc if args.nproc is not None else 1
    if nproc < 1:
        raise LaunchError(f"--nproc {nproc}: give at least 1 process")
    if args.nnodes < 1:
        raise LaunchError(f"--nnodes {args.nnodes}: give at least 1 machine")
    out = [f"--nproc-per-node={nproc}", f"--nnodes={args.nnodes}", f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}"]
    if args.nnodes == 1:
        if args.rdzv_endpoint or args.node_rank not in (None, 0):
            raise LaunchError(
                "--rdzv-endpoint / --node-rank are for several machines: add --nnodes N (N > 1)"
            )
        out.append("--standalone")  # a rendezvous on a free local port
    else:
        if not args.rdzv_endpoint:
            raise LaunchError(
                f"--nnodes {args.nnodes}: every machine needs --rdzv-endpoint HOST:PORT, the address of node 0 "
                "that all machines can reach"
            )
        host, sep, port = args.rdzv_endpoint.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise LaunchError(f"--rdzv-endpoint {args.rdzv_endpoint!r}: write HOST:PORT, e.g. node0:29500")
        if args.node_rank is not None:
            if not 0 <= args.node_rank < args.nnodes:
                raise LaunchError(
                    f"--node-rank {args.node_rank}: must be 0 … {args.nnodes - 1} (--nnodes {args.nnodes})"
                )
            # static rendezvous: node 0 hosts the store at the endpoint; global ranks follow node order
            out += ["--rdzv-backend=static", f"--master-addr={host}", f"--master-port={port}"]
            out.append(f"--node-rank={args.node_rank}")
        else:
            out += [
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint={args.rdzv_endpoint}",
                f"--rdzv-id={args.rdzv_id}",
            ]
    return [*out, "-m", "legaltune.cli", *command]


def launch(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``argv`` (legaltune's own arguments) on ``--nproc`` processes here; the exit status of
    the run (a rank's own status when one failed, 130 after Ctrl-C)."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    targs = torchrun.parse_args(torchrun_argv(args, strip_launch_flags(argv)))
    if "OMP_NUM_THREADS" not in os.environ:
        # torchrun would set 1 and say so; the cores of this machine are shared by its ranks instead
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(targs.nproc_per_node)))
    try:
        torchrun.run(targs)
    except SignalException:
        return 130
    except ChildFailedError as exc:
        codes = [f.exitcode for _, f in sorted(exc.failures.items())]
        print(
            f"error: {len(codes)} of the run's processes failed (see their messages above)", file=sys.stderr
        )
        return next((c for c in codes if c > 0), 1)
    return 0


__all__ = [
    "LAUNCH_FLAGS",
    "LaunchError",
    "add_launch_args",
    "launch",
    "strip_launch_flags",
    "torchrun_argv",
    "wants_launch",
]
