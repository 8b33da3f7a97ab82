"""`legaltune train` after SFT as a user runs it: real subprocesses on a tiny model saved locally."""

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import make_tiny_llama
from tests.test_train import RECORDS


def local_tiny_model(tmp_path, tokenizer):
    """A tiny random Llama with the embedded tokenizer, saved as a model directory a config can name."""
    path = tmp_path / "tiny-model"
    if not (path / "config.json").is_file():
        make_tiny_llama(len(tokenizer)).save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))
    return path


def sft_config(tmp_path, model_dir, data, **training):
    conf = {
        "model": {
            "model_name": str(model_dir),
            "max_seq_length": 256,
            "device_map": "cpu",
            "attn_implementation": "sdpa",
        },
        "lora": {
            "r": 4,
            "lora_alpha": 8,
            "target_modules": ["q_proj", "v_proj"],
            "use_rslora": False,
            "use_gradient_checkpointing": False,
        },
        "training": {
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "max_steps": 2,
            "learning_rate": 1e-3,
            "warmup_steps": 0,
            **training,
        },
        "optimization": {"gradient_checkpointing": False},
        "data": {"train_file": str(data), "dataloader_num_workers": 0},
        "logging": {
            "output_dir": str(tmp_path / "runs"),
            "save_strategy": "no",
            "eval_strategy": "no",
            "report_to": ["none"],
        },
    }
    name = training.get("method", "sft")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(conf, allow_unicode=True))
    return path


def legaltune(*args):
    return subprocess.run(
        [sys.executable, "-m", "legaltune.cli", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_sft_then_dpo_from_the_command_line(tmp_path, tokenizer):
    model = local_tiny_model(tmp_path, tokenizer)
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS))
    done = legaltune("train", str(sft_config(tmp_path, model, qa)))
    assert done.returncode == 0, done.stderr[-2000:]
    sft_run = next((tmp_path / "runs").glob("sft-*"))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps(
                {"prompt": r["question"], "chosen": r["answer"], "rejected": "Theo Điều 999."},
                ensure_ascii=False,
            )
            + "\n"
            for r in RECORDS
        )
    )
    dpo_cfg = sft_config(tmp_path, model, pairs, method="dpo", init_adapter=str(sft_run))
    # the QA eval file an SFT config names stays on the command line, as when a user copies one
    done = legaltune("train", str(dpo_cfg), "--set", f"data.eval_file={qa}")
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout + done.stderr
    assert "reference: the init adapter, frozen" in out and "speed: auto" in out
    assert f"{len(RECORDS)} records have no 'rejected' answer" in done.stderr
    run = next((tmp_path / "runs").glob("dpo-*"))
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/margins" in r for r in rows)
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["init_adapter"] == str(sft_run)


def test_a_wrong_init_adapter_fails_before_anything_loads(tmp_path, tokenizer):
    model = local_tiny_model(tmp_path, tokenizer)
    cfg = sft_config(
        tmp_path, model, tmp_path / "none.jsonl", method="dpo", init_adapter=str(tmp_path / "nope")
    )
    done = legaltune("train", str(cfg))
    assert done.returncode == 2
    assert "training.init_adapter:" in done.stderr and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "runs").exists()
