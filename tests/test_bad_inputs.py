"""Bad input, tried as a user would: each gets exit code 2 and an `error:` naming what is wrong and the fix —
no traceback, nothing half-written, nothing silent.

The commands run through ``legaltune.cli.main`` (the CLI's own code path, in this process, so the
cases take milliseconds); the offline model name runs as a real subprocess (the hub's offline mode
is read at import). Full disks and second writers have their own tests (test_full_disk.py,
test_run_writers.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from legaltune.cli import main
from tests.test_train import CtrlCAt, base_cfg, train
from tests.train_cli import run as run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, tokenizer) -> Path:
    """A run stopped by Ctrl-C at step 3 of 4: checkpoints 1-3, adapter-partial/, no adapter/."""
    cfg = base_cfg(
        tmp_path_factory.mktemp("bad"),
        training={"max_steps": 4, "per_device_train_batch_size": 1},
        logging={"save_strategy": "steps", "save_steps": 1, "save_total_limit": None},
    )
    return train(cfg, tokenizer, extra_callbacks=[CtrlCAt(3)]).run_dir


def cli(capsys, *args: str) -> tuple[int, str]:
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def expect_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err, err
    assert err.startswith("error: ") or "\nerror: " in err, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in: {err}"


def copy_run(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "runs" / run.name
    shutil.copytree(run, dst)
    return dst


def write_cfg(tmp_path: Path, **sections) -> Path:
    data = {
        "model": {"model_name": "smollm2-135m-instruct", "max_seq_length": 256},
        "data": {
            "train_file": str(Path(__file__).parents[1] / "data/vi_legal_qa/train.jsonl"),
            "use_context": False,
            "system_prompt": None,
        },
        "logging": {"output_dir": str(tmp_path / "runs"), "report_to": ["none"], "eval_strategy": "no"},
    }
    for sec, kv in sections.items():
        data.setdefault(sec, {}).update(kv)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# --- checkpoints a resume cannot use -------------------------------------------------------------


@pytest.mark.parametrize(
    "damage, file, needles",
    [
        ("truncate", "optimizer.pt", ["optimizer.pt truncated or changed", "checkpoint-2", "--weights-only"]),
        ("truncate", "adapter_model.safetensors", ["adapter_model.safetensors truncated", "checkpoint-2"]),
        ("truncate", "rng_state.pth", ["rng_state.pth truncated", "--weights-only"]),
        ("delete", "scheduler.pt", ["scheduler.pt missing", "--weights-only"]),
        ("rewrite", "trainer_state.json", ["trainer_state.json truncated or changed"]),
    ],
)
def test_damaged_checkpoint(capsys, tmp_path, interrupted, damage, file, needles):
    run = copy_run(interrupted, tmp_path)
    target = run / "checkpoints" / "checkpoint-3" / file
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "delete":
        target.unlink()
    else:
        target.write_text("{}")
    before = sorted(p.name for p in run.rglob("*"))
    rc, err = cli(capsys, "train", run / "config.yaml", "--resume", run)
    expect_error(rc, err, "checkpoint-3 is damaged", *needles)
    assert sorted(p.name for p in run.rglob("*")) == before  # refused before touching anything
    if file == "adapter_model.safetensors":
        assert "--weights-only" not in err  # damaged weights cannot be continued from


def test_resume_with_another_config(capsys, tmp_path, interrupted):
    run = copy_run(interrupted, tmp_path)
    rc, err = cli(capsys, "train", run / "config.yaml", "--set", "lora.r=8", "--resume", run)
    expect_error(rc, err, "lora.r: 4 in the run, 8 now", "--resume")


def test_resume_of_a_checkpoint_that_does_not_exist(capsys, tmp_path, interrupted):
    run = copy_run(interrupted, tmp_path)
    rc, err = cli(capsys, "train", run / "config.yaml", "--resume", run / "checkpoints" / "checkpoint-9")
    expect_error(rc, err, "no such checkpoint")


# --- run names and run directories ---------------------------------------------------------------


@pytest.mark.parametrize(
    "logging, needles",
    [
        ({"run_name": "../../../x"}, ["logging.run_name '../../../x' contains '/'"]),
        ({"run_name": "/tmp/abs"}, ["logging.run_name '/tmp/abs' contains '/'"]),
        ({"run_name": ".."}, ["logging.run_name '..' is '..'"]),
        ({"output_dir": ""}, ["logging.output_dir is empty"]),
    ],
)
def test_run_paths_stay_inside_output_dir(capsys, tmp_path, logging, needles):
    cfg = write_cfg(tmp_path / "w", logging=logging)
    before = sorted(tmp_path.rglob("*"))
    rc, err = cli(capsys, "train", cfg)
    expect_error(rc, err, *needles)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written anywhere


def test_existing_run_name_needs_resume(capsys, tmp_path, interrupted):
    run = copy_run(interrupted, tmp_path)
    cfg = write_cfg(tmp_path, logging={"run_name": run.name})
    rc, err = cli(capsys, "train", cfg)
    expect_error(rc, err, f"{run} already exists", "--resume")


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--resume"], ["no run of", "to resume", "without --resume"]),
        (["--resume", "{tmp}/runs/nope"], ["no such run"]),
        (["--resume", "{tmp}"], ["is not a run directory"]),
        (["--weights-only"], ["--weights-only", "with --resume"]),
    ],
)
def test_resume_of_what_is_not_a_run(capsys, tmp_path, args, needles):
    cfg = write_cfg(tmp_path)
    rc, err = cli(capsys, "train", cfg, *[a.format(tmp=tmp_path) for a in args])
    expect_error(rc, err, *needles)


@pytest.mark.parametrize(
    "args, needles",
    [
        (["eval", "--run", "{tmp}/runs/nope"], ["no such run"]),
        (
            ["generate", "--run", "{tmp}/runs/nope", "--input", "{q}", "--output", "{tmp}/a.jsonl"],
            ["no such run"],
        ),
        (["chat", "--run", "{tmp}/runs/nope"], ["no such run"]),
        (["merge", "--run", "{tmp}/runs/nope", "--output", "{tmp}/m"], ["no such run"]),
        (["export", "gguf", "--run", "{tmp}/runs/nope", "--output", "{tmp}/m.gguf"], ["no such run"]),
        (["report", "{tmp}"], ["is not a run directory"]),
        (["report", "--run", "{tmp}/runs/nope"], ["no such run"]),
        (["report", "{run}", "--run", "{run}"], ["give the run directory once"]),
        (["eval", "--run", "{run}"], ["no final adapter", "interrupted at step 3/4", "adapter-partial"]),
        (["merge", "--run", "{run}", "--output", "{tmp}/m"], ["no final adapter", "adapter-partial"]),
    ],
)
def test_commands_on_what_is_not_a_usable_run(capsys, tmp_path, interrupted, args, needles):
    run = copy_run(interrupted, tmp_path)
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "Tuổi kết hôn của nữ?"}\n', encoding="utf-8")
    rc, err = cli(capsys, *[a.format(tmp=tmp_path, run=run, q=questions) for a in args])
    expect_error(rc, err, *needles)


def test_report_accepts_run_like_other_commands(capsys, tmp_path, interrupted):
    run = copy_run(interrupted, tmp_path)
    (run / "report.html").unlink()
    assert main(["report", "--run", str(run)]) == 0 and (run / "report.html").is_file()


# --- the machine and the model -------------------------------------------------------------------


def test_8bit_optimizer_without_bitsandbytes_or_cuda(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine may run adamw_8bit")
    cfg = write_cfg(tmp_path, optimization={"optim": "adamw_8bit"})
    rc, err = cli(capsys, "train", cfg)
    expect_error(rc, err, "optimization.optim: adamw_8bit needs bitsandbytes", "use optim: adamw_torch")
    assert not (tmp_path / "runs").exists()


def test_chat_template_tripping_the_jinja_sandbox(capsys, tmp_path):
    evil = tmp_path / "evil.jinja"
    evil.write_text("{% for m in messages %}{{ m.__class__.__mro__ }}{% endfor %}", encoding="utf-8")
    cfg = write_cfg(tmp_path, data={"chat_template": str(evil)})
    rc, err = cli(capsys, "train", cfg)
    expect_error(rc, err, "data.chat_template failed to render", "SecurityError", "chatml or llama-3.1")
    assert not (tmp_path / "runs").exists()


def test_unknown_model_name_offline(tmp_path):
    cfg = write_cfg(tmp_path, model={"model_name": "llama-9000"})
    done = run_cli("train", str(cfg))  # HF_HUB_OFFLINE=1 in its environment
    expect_error(done.returncode, done.stderr, "cannot load model 'llama-9000'", "Names that work offline")
    assert (
        "'smollm2-135m-instruct' or 'gemma-3-270m' (the embedded models)" in done.stderr
        and "directory with config.json" in done.stderr
    )
    assert not (tmp_path / "runs").exists()


# --- damaged adapter files -----------------------------------------------------------------------


@pytest.mark.parametrize("file", ["tokenizer.json", "adapter_model.safetensors"])
def test_truncated_adapter_file_is_named(capsys, tmp_path, tokenizer, file):
    from tests.test_merge import make_run

    run = make_run(tmp_path, tokenizer)
    target = run / "adapter" / file
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    rc, err = cli(capsys, "merge", "--run", run, "--output", tmp_path / "merged")
    expect_error(rc, err, f"{target}", "damaged or truncated")
    assert not (tmp_path / "merged").exists()
