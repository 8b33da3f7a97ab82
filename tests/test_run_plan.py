"""The run's speed plan (plan/speed.py): decided before weights load, from data and machine."""

import pytest

from legaltune.config.load import build_config
from legaltune.plan.memory import GIB
from legaltune.plan.speed import padding_free_choice, plan_run


def _cfg(**over):
    raw = {
        "model": {"model_name": "meta-llama/Llama-3.1-8B-Instruct", "max_seq_length": 8192},
        "lora": {"r": 16, "lora_alpha": 16, "use_gradient_checkpointing": "unsloth"},
        "training": {
            "per_device_train_batch_size": 32,
            "gradient_accumulation_steps": 1,
            "warmup_ratio": 0.05,
        },
        "optimization": {"gradient_checkpointing": True},
        "data": {"train_file": "data/vi_legal_qa/train.jsonl", "eval_file": "data/vi_legal_qa/eval.jsonl"},
        "speed": {"mode": "auto"},
    }
    for sec, kv in over.items():
        raw.setdefault(sec, {}).update(kv)
    return build_config(raw)


def test_checkpointing_is_planned_for_the_data_not_the_worst_case():
    cfg = _cfg()
    short = [600] * 400  # the bundled sample's scale: far below 32 x 8192 tokens per micro-batch
    plan = plan_run(
        cfg, short, on_cuda=True, attn="flash_attention_2", gpu_memory=139 * GIB, host_memory=120 * GIB
    )
    assert plan.padding_free and plan.micro_batch == (1, 32 * 600)
    assert plan.checkpoint_layers == 0, plan.choice  # 19k tokens fit an H200 without any checkpointing
    whole = _cfg(speed={"forward_tokens": False})  # one forward per micro-batch
    worst = plan_run(
        whole,
        [8192] * 400,
        on_cuda=True,
        attn="flash_attention_2",
        gpu_memory=139 * GIB,
        host_memory=120 * GIB,
    )
    assert worst.checkpoint_layers > 16 and worst.forward_tokens is None


def test_a_micro_batch_too_large_to_train_unchecked_runs_as_several_forwards():
    """Seed 000's 32 examples of up to 8,192 tokens: forwards of whole examples, each small enough
    to need no checkpointed layer, instead of one 262k-token forward checkpointing most layers."""
    lengths = [600] * 300 + [8000] * 40  # short answers and long law-text contexts
    kw = dict(on_cuda=True, attn="flash_attention_2", gpu_memory=139 * GIB, host_memory=120 * GIB)
    split = plan_run(_cfg(), lengths, **kw)
    whole = plan_run(_cfg(speed={"forward_tokens": False}), lengths, **kw)
    assert (
        whole.forward_tokens is None and whole.checkpoint_layers > 16 and whole.host_offload_bytes > 20 * GIB
    )
    assert split.micro_batch == whole.micro_batch == (1, 32 * 8000)
    assert 8000 <= split.forward_tokens < 32 * 8000
    assert split.checkpoint_layers == 0 and split.host_offload_bytes == 0, split.choice
    assert split.plan.memory.tokens_per_micro_batch == split.forward_tokens  # memory planned per forward
    assert "forwards of ≤" in split.summary() and split.to_dict()["forward_tokens"] == split.forward_tokens
    # the largest such forward, with headroom: a larger one would checkpoint
    unchecked = plan_run(
        _cfg(speed={"forward_tokens": int(split.forward_tokens / 0.85) + 2048}), lengths, **kw
    )
    assert unchecked.checkpoint_layers > 0
    # a fixed cap, never below one example; one that the micro-batch does not reach splits nothing
    fixed = plan_run(_cfg(speed={"forward_tokens": 4000}), lengths, **kw)
    assert fixed.forward_tokens == 8000
    assert plan_run(_cfg(speed={"forward_tokens": 10**6}), lengths, **kw).forward_tokens is None
    # a micro-batch that fits whole is not split; under DDP each rank splits its own (the reduction
    # waits for the last group), under FSDP none does (it reduce-scatters at every backward)
    assert plan_run(_cfg(), [600] * 400, **kw).forward_tokens is None
    assert plan_run(_cfg(), lengths, world_size=2, **kw).forward_tokens == split.forward_tokens
    fsdp = _cfg(distributed={"strategy": "fsdp"})
    assert plan_run(fsdp, lengths, world_size=2, **kw).forward_tokens is None


def test_host_memory_that_would_not_fit_stops_the_run_before_loading():
    cfg = _cfg(speed={"forward_tokens": False})
    long = [8192] * 64
    small_host = plan_run(
        cfg, long, on_cuda=True, attn="flash_attention_2", gpu_memory=80 * GIB, host_memory=16 * GIB
    )
    assert any("host memory" in p and "use_gradient_checkpointing" in p for p in small_host.problems)
    big_host = plan_run(
        cfg, long, on_cuda=True, attn="flash_attention_2", gpu_memory=80 * GIB, host_memory=1000 * GIB
    )
    assert not any("host memory" in p for p in big_host.problems)


def test_error_lints_become_problems():
    cfg = _cfg(training={"warmup_ratio": None, "warmup_steps": 100, "gradient_accumulation_steps": 16})
    plan = plan_run(cfg, [600] * 334, on_cuda=False, attn="sdpa", gpu_memory=None, host_memory=None)
    assert any(p.startswith("training.warmup_steps") for p in plan.problems)


@pytest.mark.parametrize(
    ("setting", "mode", "on_cuda", "attn", "expected"),
    [
        ("auto", "auto", True, "flash_attention_2", True),
        ("auto", "auto", False, "sdpa", False),  # no varlen kernel on a CPU: padded batches are faster
        (True, "auto", False, "sdpa", True),  # asked for: correct there too (block mask), only slower
        ("auto", "off", True, "flash_attention_2", False),  # the reference path keeps padded batches
        (False, "auto", True, "flash_attention_2", False),
    ],
)
def test_padding_free_choice(setting, mode, on_cuda, attn, expected):
    cfg = _cfg(speed={"padding_free": setting, "mode": mode})
    assert padding_free_choice(cfg, on_cuda=on_cuda, attn=attn)[0] is expected


def test_plan_from_data_prints_what_train_will_plan(capsys):
    """`legaltune plan --from-data`: the tokenized data's largest micro-batch, padding-free for a GPU,
    the same numbers `plan_run` gives train (the seed 000 preset's warm-up error included)."""
    import json

    from legaltune.cli import main

    rc = main(
        [
            "plan",
            "configs/llama31-8b-h200.yaml",
            "--set",
            "model.model_name=smollm2-135m-instruct",
            "--from-data",
            "--gpu-memory",
            "24GiB",
            "--host-memory",
            "100GiB",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    run = out["run"]
    assert rc == 1 and any(p.startswith("training.warmup_steps") for p in run["problems"])
    rows, tokens = run["micro_batch"]
    assert run["padding_free"] and rows == 1 and 10_000 < tokens < 32 * 8192
    assert out["memory"]["tokens_per_micro_batch"] == tokens


def test_plain_plan_says_it_planned_the_worst_case_and_points_to_from_data(capsys):
    """Without --from-data the plan is for batch × max_seq_length: it says so, so that a user does not
    read its checkpointing choice as the one train will make."""
    import json

    from legaltune.cli import main

    main(
        [
            "plan",
            "configs/llama31-8b-h200.yaml",
            "--gpu-memory",
            "141GiB",
            "--host-memory",
            "120GiB",
            "--json",
        ]
    )
    notes = json.loads(capsys.readouterr().out)["memory"]["notes"]
    assert any("262,144 tokens" in n and "--from-data" in n for n in notes), notes


def test_input_embeddings_go_to_the_host_when_every_layer_is_checkpointed():
    """speed.embeddings_on_host auto: only a run short of GPU memory (every layer checkpointed)
    gives the table's 1.0 GiB (Llama-3.1-8B, untied) to pinned host memory; the plan counts it."""
    kw = dict(on_cuda=True, attn="flash_attention_2", host_memory=120 * GIB)
    lengths = [2048] * 64
    table = 128256 * 4096 * 2
    lean = plan_run(_cfg(speed={"gpu_memory_gb": 12}), lengths, gpu_memory=12 * GIB, **kw)
    kept = plan_run(
        _cfg(speed={"gpu_memory_gb": 12, "embeddings_on_host": False}), lengths, gpu_memory=12 * GIB, **kw
    )
    assert kept.checkpoint_layers == 32 and not kept.embeddings_on_host
    assert lean.embeddings_on_host and "input embeddings in host memory" in lean.summary()
    assert lean.to_dict()["embeddings_on_host"] is True
    assert kept.plan.memory.peak_bytes - lean.plan.memory.peak_bytes == pytest.approx(table, rel=1e-6)
    assert lean.host_offload_bytes - kept.host_offload_bytes == pytest.approx(table, rel=1e-6)
    roomy = plan_run(_cfg(), lengths, gpu_memory=139 * GIB, **kw)
    assert roomy.checkpoint_layers < 32 and not roomy.embeddings_on_host
    assert plan_run(
        _cfg(speed={"embeddings_on_host": True}), lengths, gpu_memory=139 * GIB, **kw
    ).embeddings_on_host
    # a table the run trains, or one a tied LM head reads, stays on the GPU
    adapted = _cfg(speed={"gpu_memory_gb": 12}, lora={"target_modules": ["q_proj", "embed_tokens"]})
    assert not plan_run(adapted, lengths, gpu_memory=12 * GIB, **kw).embeddings_on_host
    tied = _cfg(speed={"gpu_memory_gb": 1}, model={"model_name": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    tied_plan = plan_run(tied, lengths, gpu_memory=1 * GIB, **kw)
    assert tied_plan.checkpoint_layers == tied_plan.plan.arch.layers and not tied_plan.embeddings_on_host
