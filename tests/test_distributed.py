"""Training on several processes: real torchrun / accelerate launch subprocesses, gloo on the CPU.

A tiny random Llama (the embedded model's tokenizer) saved to a temporary directory trains 6 steps
of LoRA on 16 examples of the bundled sample, with the speed engine's CPU paths on (fused LoRA,
offloaded checkpointing, padding-free micro-batches through the block mask; TRL's chunked LM head):

- 2 processes × batch 2 (`legaltune train --nproc 2`) give the loss of every step and the adapter of
  1 process × batch 4 within float rounding, into one run directory that only rank 0 wrote; so do
  2 processes that train each micro-batch as one forward per example (`speed.forward_tokens`);
- kill -9 of the launcher and both ranks after a checkpoint, then `accelerate launch --resume`:
  the adapter of the uninterrupted run; resuming that checkpoint on 1 process with twice the
  gradient accumulation: the same;
- two "machines" on localhost (`--nnodes 2 --node-rank R --rdzv-endpoint`): the same run again,
  each node's host memory budgeted for its own ranks;
- FSDP2: accelerate shards only over GPUs, so tests/fsdp_cpu_driver.py drives accelerate's own
  sharding on the CPU (gradients and AdamW steps against an unsharded copy); the Trainer run under
  FSDP is a GPU test (`-m multigpu`, issue 18).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import make_tiny_llama
from tests.train_cli import REPO, command, env, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

STEPS = 6
# fp32 on the CPU: two ranks sum their halves of the batch in another order than one process does
LOSS_RTOL = 1e-5
ADAPTER_ATOL = 2e-6


def _tiny_llama_dir(root: Path) -> Path:
    from transformers import AutoTokenizer

    from legaltune.model.embedded import ensure_embedded_model

    tok = AutoTokenizer.from_pretrained(str(ensure_embedded_model()))
    out = root / "tiny-llama"
    make_tiny_llama(len(tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("distributed")
    _tiny_llama_dir(root)
    return root


def _config(work: Path, name: str, *, batch: int, **over) -> Path:
    cfg = {
        "model": {
            "model_name": str(work / "tiny-llama"),
            "max_seq_length": 128,
            "attn_implementation": "sdpa",
            "device_map": "cpu",
            "dtype": "float32",
        },
        "lora": {
            "r": 4,
            "lora_alpha": 8,
            "target_modules": ["q_proj", "v_proj", "down_proj"],
            "use_rslora": False,
            "use_gradient_checkpointing": "unsloth",  # the offloader (on a CPU it keeps tensors where they are)
        },
        "training": {
            "per_device_train_batch_size": batch,
            "gradient_accumulation_steps": 1,
            "max_steps": STEPS,
            "learning_rate": 2e-3,
            "warmup_steps": 0,
            "lr_scheduler_type": "constant",
            "seed": 7,
        },
        "optimization": {"gradient_checkpointing": True},
        "data": {
            "train_file": str(REPO / "data" / "vi_legal_qa" / "train.jsonl"),
            "use_context": False,
            "max_train_examples": 16,
            "group_by_length": False,
            "dataloader_num_workers": 0,
            "dataloader_pin_memory": False,
            "system_prompt": None,
        },
        "logging": {
            "output_dir": str(work / "runs"),
            "run_name": name,
            "logging_steps": 1,
            "save_strategy": "steps",
            "save_steps": 2,
            "save_total_limit": 5,
            "eval_strategy": "no",
            "report_to": ["tensorboard"],
        },
        "speed": {"mode": "auto", "padding_free": True},
    }
    for sec, kv in over.items():
        cfg.setdefault(sec, {}).update(kv)
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def _run(*args: str, wrap: list[str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*(wrap or []), *command(*args)], capture_output=True, text=True, env=env(), timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def _losses(run: Path) -> list[float]:
    rows = [r for r in _rows(run) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # every step once: rank 0 alone logs
    return [r["loss"] for r in rows]


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _moved(adapter: dict[str, torch.Tensor]) -> float:
    """How far training moved the adapter: PEFT starts every lora_B at zero."""
    return max(float(v.abs().max()) for k, v in adapter.items() if "lora_B" in k)


def _summary(run: Path) -> dict:
    return json.loads((run / "train_summary.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def one_process(work) -> Path:
    from legaltune.config.load import load_config
    from legaltune.train.trainer import run_training

    res = run_training(load_config(_config(work, "one", batch=4)), show_progress=False)
    return res.run_dir


@pytest.fixture(scope="module")
def ddp(work) -> tuple[Path, subprocess.CompletedProcess]:
    proc = _run("train", str(_config(work, "ddp", batch=2)), "--nproc", "2")
    return work / "runs" / "ddp", proc


def test_two_processes_train_as_one_with_the_whole_batch(one_process, ddp):
    run, proc = ddp
    one, two = _losses(one_process), _losses(run)
    assert two == pytest.approx(one, rel=LOSS_RTOL)
    assert one[0] != pytest.approx(one[-1], rel=1e-3)  # it trained: the losses moved
    diff = _max_diff(_adapter(run), _adapter(one_process))
    assert diff < ADAPTER_ATOL < _moved(_adapter(run)) / 100, diff
    # the whole run's counts, not rank 0's half
    for a, b in zip(_rows(run), _rows(one_process), strict=True):
        assert (a["tokens"], a["trained_tokens"]) == (b["tokens"], b["trained_tokens"])
    assert _summary(run)["train"]["train_loss"] == pytest.approx(_summary(one_process)["train"]["train_loss"])
    # find_unused_parameters set from the model: no DDP search (nor its warning), said once
    assert "find_unused_parameters false" in proc.stdout
    assert proc.stdout.count("distributed: ddp over 2 processes") == 1
    assert "find_unused_parameters=True was specified" not in proc.stderr


def test_ddp_ranks_training_several_forwards_per_micro_batch_train_as_one(one_process, work):
    """speed.forward_tokens under DDP: each rank trains its micro-batch as forwards of one example
    (the cap is below every pair), the gradient reduction waits for each rank's last group, and the
    run is the one-process, one-forward run."""
    run = work / "runs" / "split-ddp"
    _run("train", str(_config(work, "split-ddp", batch=2, speed={"forward_tokens": 1})), "--nproc", "2")
    assert _summary(run)["plan"]["forward_tokens"] >= 1
    assert _losses(run) == pytest.approx(_losses(one_process), rel=LOSS_RTOL)
    diff = _max_diff(_adapter(run), _adapter(one_process))
    assert diff < ADAPTER_ATOL, diff


def test_one_run_directory_written_by_rank_zero(work, ddp):
    run, proc = ddp
    assert proc.stdout.count("run directory:") == 1
    assert sorted(p.name for p in (work / "runs").iterdir() if p.name.startswith("ddp")) == ["ddp"]
    assert not (run / "train.lock").exists()
    assert len(list((run / "tensorboard").glob("events.*"))) == 1
    summary = _summary(run)
    assert summary["status"] == "finished" and summary["distributed"]["strategy"] == "ddp"
    assert summary["plan"]["host_ranks"] == 2  # both ranks share this machine's host memory
    steps = [int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("checkpoint-*")]
    assert sorted(steps) == [2, 4, 6]
    for step in steps:
        ckpt = run / "checkpoints" / f"checkpoint-{step}"
        assert {p.name for p in ckpt.glob("rng_state*")} == {"rng_state_0.pth", "rng_state_1.pth"}
        state = json.loads((ckpt / "legaltune_state.json").read_text(encoding="utf-8"))
        assert state["world_size"] == 2
        sealed = json.loads((ckpt / "legaltune_checkpoint.json").read_text(encoding="utf-8"))
        assert {"rng_state_0.pth", "rng_state_1.pth", "adapter_model.safetensors"} <= set(sealed["files"])


def _kill_tree(proc: subprocess.Popen) -> None:
    """kill -9 the launcher and every rank (torchrun starts each in a session of its own)."""
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.communicate(timeout=60)
    psutil.wait_procs(family, timeout=30)


@pytest.fixture(scope="module")
def killed(work) -> Path:
    """The ddp run, killed -9 (launcher and ranks) just after its checkpoint-2 was sealed."""
    cfg = _config(work, "killed", batch=2)
    proc = subprocess.Popen(
        command("train", str(cfg), "--nproc", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    run = work / "runs" / "killed"
    seal = run / "checkpoints" / "checkpoint-2" / "legaltune_checkpoint.json"
    hit = wait_until(seal.is_file, proc, timeout=600, poll=0.005)
    _kill_tree(proc)
    assert hit, "the run ended before its second step's checkpoint"
    assert not (run / "adapter").exists()  # killed mid-run
    # the same killed run, for a resume on another number of processes
    shutil.copytree(run, work / "runs-copy" / "killed")
    return run


def test_kill_9_and_resume_through_accelerate_launch(work, ddp, killed):
    # --multi_gpu: accelerate's torchrun launcher (its --cpu one needs MPI); without GPUs the ranks use gloo
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    accelerate += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m"]
    cfg = work / "killed.yaml"
    proc = subprocess.run(
        [*accelerate, "legaltune.cli", "train", str(cfg), "--resume", str(killed)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "taking over the stale lock" in proc.stderr  # rank 0's, once
    assert proc.stderr.count("taking over the stale lock") == 1
    summary = _summary(killed)
    assert summary["resumed_from_step"] in (2, 4) and summary["status"] == "finished"
    _losses(killed)  # every step once over both sessions
    # the RNG of each rank and the data order continue: the uninterrupted run's adapter
    assert _max_diff(_adapter(killed), _adapter(ddp[0])) < 1e-7


def test_resume_on_one_process_with_twice_the_accumulation(work, ddp, killed):
    from legaltune.config.load import load_config
    from legaltune.errors import UserError
    from legaltune.train.trainer import run_training

    run = work / "runs-copy" / "killed"
    cfg_path = work / "killed.yaml"
    other = load_config(cfg_path, [f"logging.output_dir={work / 'runs-copy'}"])
    with pytest.raises(
        UserError, match=r"effective batch of 4 .* this run has 1 and an effective batch of 2"
    ):
        run_training(other, resume=str(run), show_progress=False)
    kept = load_config(
        cfg_path, [f"logging.output_dir={work / 'runs-copy'}", "training.gradient_accumulation_steps=2"]
    )
    notes: list[str] = []
    res = run_training(kept, resume=str(run), show_progress=False, notice=notes.append)
    assert any("trained by 2 processes, this run has 1" in n and "stays 4" in n for n in notes), notes
    assert _max_diff(_adapter(res.run_dir), _adapter(ddp[0])) < ADAPTER_ATOL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_machines_through_torchrun_rendezvous(work, ddp):
    cfg = _config(work, "nodes", batch=2)
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [
        subprocess.Popen(
            command(
                "train",
                str(cfg),
                "--nproc",
                "1",
                "--nnodes",
                "2",
                "--node-rank",
                str(r),
                "--rdzv-endpoint",
                endpoint,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=900) for p in nodes]
    for p, (out, err) in zip(nodes, outs, strict=True):
        assert p.returncode == 0, out[-3000:] + err[-6000:]
    assert "run directory:" in outs[0][0] and "run directory:" not in outs[1][0]
    run = work / "runs" / "nodes"
    assert sorted(p.name for p in (work / "runs").iterdir() if p.name.startswith("nodes")) == ["nodes"]
    # each machine's host memory is its own rank's: the same allowance as one process alone
    assert _summary(run)["plan"]["host_ranks"] == 1
    assert {p.name for p in (run / "checkpoints" / "checkpoint-2").glob("rng_state*")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }
    assert _max_diff(_adapter(run), _adapter(ddp[0])) < 1e-7  # the same two ranks, one per "machine"


def test_speed_engine_under_fsdp2_and_ddp_on_cpu(work):
    out = work / "fsdp.json"
    e = env()
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e["PYTHONPATH"]
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]
        + [str(REPO / "tests" / "fsdp_cpu_driver.py"), str(work / "tiny-llama"), str(out)],
        capture_output=True,
        text=True,
        env=e,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    ranks = json.loads(out.read_text(encoding="utf-8"))
    for r in ranks:
        # transformers read legaltune's fsdp arguments into accelerate's FSDP2 plugin
        assert r["plugin"]["fsdp_version"] == 2
        assert r["plugin"]["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer"
        assert r["layers_sharded"] and r["root_sharded"] and r["frozen_all_dtensor"]
        assert r["lora_dtypes"] == ["torch.float32"]
        # the speed engine's paths ran sharded: fused LoRA, compiled layers, offloaded checkpointing
        assert r["fused_lora"] == 14 and r["compiled_layers"] == 2 and r["checkpointing"] == "offload"
        # each rank holds half the frozen base, as the plan says
        assert r["local_frozen_bytes"] == pytest.approx(r["plan_weights_bytes"], rel=0.01)
        # and trains as the unsharded model on the whole batch
        assert r["loss_diff"] < 1e-5 and r["grad_diff"] < 1e-6
        assert r["param_diff"] < 1e-5 < r["moved"] / 100
        # the same model under DDP, with the search for unused parameters off as the strategy chose
        assert r["ddp_find_unused_parameters"] is False and r["ddp_compiled_layers"] == 2
        assert r["ddp_param_diff"] < 1e-5
        # a Ctrl-C that reached one rank stops all of them after the same step; none, none
        assert r["interrupt_stops"] == [True, False]
    assert time.monotonic() - started < 900


@pytest.mark.gpu
@pytest.mark.multigpu
def test_fsdp_trainer_run_matches_ddp_on_gpus(work):
    """2 CUDA GPUs (issue 18): the Trainer under FSDP2 trains the adapter DDP trains, bf16 tolerance."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    gpu = {"device_map": "auto", "dtype": "bfloat16"}
    ddp_cfg = _config(work, "gpu-ddp", batch=2, model=gpu)
    fsdp_cfg = _config(work, "gpu-fsdp", batch=2, model=gpu, distributed={"strategy": "fsdp"})
    _run("train", str(ddp_cfg), "--nproc", "2")
    proc = _run("train", str(fsdp_cfg), "--nproc", "2")
    assert "fsdp: each LlamaDecoderLayer sharded over 2 processes" in proc.stdout
    runs = work / "runs"
    assert _losses(runs / "gpu-fsdp") == pytest.approx(_losses(runs / "gpu-ddp"), rel=2e-2)
    assert _max_diff(_adapter(runs / "gpu-fsdp"), _adapter(runs / "gpu-ddp")) < 5e-3
