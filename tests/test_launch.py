"""`legaltune train --nproc/--nnodes`: the torchrun command each launch makes, and bad flag combinations."""

import argparse
import subprocess
import sys

import pytest

from legaltune.distributed.launch import LaunchError, add_launch_args, strip_launch_flags, torchrun_argv


def _args(*argv):
    p = argparse.ArgumentParser()
    add_launch_args(p)
    return p.parse_args(list(argv))


@pytest.fixture(autouse=True)
def _not_under_a_launcher(monkeypatch):
    for name in ("WORLD_SIZE", "TORCHELASTIC_RUN_ID", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_launch_flags_are_stripped_from_the_command_each_rank_runs():
    argv = ["train", "c.yaml", "--nproc", "2", "--set", "lora.r=4", "--nnodes=2", "--node-rank", "1"]
    argv += ["--rdzv-endpoint", "h:1", "--rdzv-id=x", "--resume"]
    assert strip_launch_flags(argv) == ["train", "c.yaml", "--set", "lora.r=4", "--resume"]


def test_one_machine_uses_a_standalone_rendezvous():
    argv = torchrun_argv(_args("--nproc", "4"), ["train", "c.yaml"])
    assert "--nproc-per-node=4" in argv and "--standalone" in argv
    assert argv[-4:] == ["-m", "legaltune.cli", "train", "c.yaml"]
    # the same torchrun parser that `torchrun` itself uses accepts it
    from torch.distributed import run as torchrun

    parsed = torchrun.parse_args(argv)
    assert parsed.module and parsed.training_script == "legaltune.cli" and parsed.standalone


def test_several_machines_with_node_rank_use_the_static_rendezvous():
    from torch.distributed import run as torchrun

    argv = torchrun_argv(
        _args("--nproc", "8", "--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", "node0:29400"),
        ["train"],
    )
    parsed = torchrun.parse_args(argv)
    assert (parsed.rdzv_backend, parsed.master_addr, parsed.master_port, parsed.node_rank) == (
        "static",
        "node0",
        29400,
        1,
    )
    assert parsed.nnodes == "2" and parsed.nproc_per_node == "8"


def test_several_machines_without_node_rank_use_c10d():
    from torch.distributed import run as torchrun

    argv = torchrun_argv(
        _args("--nnodes", "2", "--rdzv-endpoint", "node0:29400", "--rdzv-id", "job7"), ["train"]
    )
    parsed = torchrun.parse_args(argv)
    assert (parsed.rdzv_backend, parsed.rdzv_endpoint, parsed.rdzv_id) == ("c10d", "node0:29400", "job7")


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (("--nnodes", "2"), "--rdzv-endpoint HOST:PORT"),
        (("--nnodes", "2", "--rdzv-endpoint", "node0"), "write HOST:PORT"),
        (("--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "n:1"), "must be 0 … 1"),
        (("--nproc", "2", "--rdzv-endpoint", "n:1"), "add --nnodes"),
        (("--nproc", "0"), "at least 1 process"),
    ],
)
def test_bad_launch_flags_are_named(flags, says):
    with pytest.raises(LaunchError, match=says):
        torchrun_argv(_args(*flags), ["train"])


def test_launch_flags_inside_a_launched_process_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LaunchError, match="already started by a launcher"):
        torchrun_argv(_args("--nproc", "2"), ["train"])


def test_cli_reports_a_bad_combination_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "legaltune.cli", "train", "configs/demo.yaml", "--nnodes", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "error: --nnodes 2: every machine needs --rdzv-endpoint" in proc.stderr
    assert "Traceback" not in proc.stderr
