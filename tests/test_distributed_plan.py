"""The plan of a run over several GPUs: memory per GPU under DDP and FSDP2, host memory per machine."""

import pytest

from legaltune.config.load import build_config
from legaltune.plan.core import make_plan
from legaltune.plan.memory import GIB
from legaltune.plan.speed import plan_run


def _cfg(**over):
    raw = {
        "model": {"model_name": "meta-llama/Llama-3.1-8B-Instruct", "max_seq_length": 8192},
        "lora": {"r": 16, "lora_alpha": 16, "target_modules": ["all-linear"]},
        "training": {
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 4,
            "warmup_ratio": 0.05,
        },
    }
    for sec, kv in over.items():
        raw.setdefault(sec, {}).update(kv)
    return build_config(raw)


def _component(plan, start):
    (value,) = [v for k, v in plan.memory.components.items() if k.startswith(start)]
    return value


def test_ddp_keeps_everything_and_adds_gradient_buckets():
    one = make_plan(_cfg(), world_size=1)
    ddp = make_plan(_cfg(), world_size=4)
    lora = one.params.trainable * 4
    assert _component(ddp, "weights") == _component(one, "weights")
    assert _component(ddp, "DDP gradient buckets") == lora
    assert ddp.memory.peak_bytes == pytest.approx(one.memory.peak_bytes + lora)
    assert "DDP" not in " ".join(one.memory.components)


def test_fsdp_shards_weights_lora_and_optimizer_per_gpu():
    one = make_plan(_cfg(), world_size=1)
    fsdp = make_plan(_cfg(distributed={"strategy": "fsdp"}), world_size=4)
    assert _component(fsdp, "weights") == pytest.approx(_component(one, "weights") / 4)
    for name in ("LoRA parameters", "LoRA gradients", "optimizer states"):
        assert _component(fsdp, name) == pytest.approx(_component(one, name) / 4), name
    arch = one.arch
    head = arch.vocab * arch.hidden * 2
    layer = (_component(one, "weights") - head * (1 if arch.tie_embeddings else 2)) / arch.layers
    gathered = _component(fsdp, "gathered for compute (2 layers")
    assert 2 * layer + head < gathered < 2 * layer + head + 0.01 * GIB  # + the LoRA weights of 2 layers
    # an 8B base on 4 GPUs: 16 GiB of weights become 3.7 + 1.8 gathered
    assert fsdp.memory.peak_bytes < one.memory.peak_bytes - 8 * GIB
    # keeping every gathered layer until backward costs the whole model again
    kept = make_plan(
        _cfg(distributed={"strategy": "fsdp", "fsdp_reshard_after_forward": False}), world_size=4
    )
    assert _component(kept, "gathered for compute (32 layers") > 0.9 * _component(one, "weights")


def test_fsdp_leaves_a_4bit_base_whole():
    four = {"quantization": {"load_in_4bit": True}, "distributed": {"strategy": "fsdp"}}
    one = make_plan(_cfg(quantization={"load_in_4bit": True}), world_size=1)
    fsdp = make_plan(_cfg(**four), world_size=4)
    arch = one.arch
    embeddings = arch.vocab * arch.hidden * 2 * (1 if arch.tie_embeddings else 2)  # 16-bit, not quantized
    saved = _component(one, "weights") - _component(fsdp, "weights")
    assert saved == pytest.approx(0.75 * embeddings, rel=0.01)  # only the 16-bit rest is sharded 1/4
    assert any(lint.key == "distributed.strategy" and "4-bit" in lint.message for lint in fsdp.lints)


def test_world_size_one_ignores_the_strategy():
    one = make_plan(_cfg(), world_size=1)
    fsdp_one = make_plan(_cfg(distributed={"strategy": "fsdp"}), world_size=1)
    assert fsdp_one.memory.components == one.memory.components


def test_fsdp_load_that_does_not_fit_one_gpu_is_an_error():
    plan = make_plan(_cfg(distributed={"strategy": "fsdp"}), world_size=8, gpu_memory=12 * GIB)
    assert any(lint.level == "error" and "loads the whole" in lint.message for lint in plan.lints)
    roomy = make_plan(_cfg(distributed={"strategy": "fsdp"}), world_size=8, gpu_memory=80 * GIB)
    assert not any("loads the whole" in lint.message for lint in roomy.lints)


def test_effective_batch_and_steps_count_every_gpu():
    plan = make_plan(_cfg(), world_size=8, train_examples=6400)
    assert plan.effective_batch == 4 * 4 * 8
    assert plan.steps_per_epoch == 6400 // (4 * 4 * 8)


def _offload_cfg():
    return _cfg(
        training={"per_device_train_batch_size": 32, "gradient_accumulation_steps": 1},
        lora={"use_gradient_checkpointing": "unsloth"},
        optimization={"gradient_checkpointing": True},
        # one forward per micro-batch: the 32 x 8,192 tokens offload (split, nothing would)
        speed={"offload_attention": "auto", "forward_tokens": False},
    )


def test_host_memory_is_shared_by_the_gpus_of_a_machine():
    host = 1600 * GIB
    alone = make_plan(_offload_cfg(), world_size=1, host_memory=host)
    eight = make_plan(_offload_cfg(), world_size=8, host_memory=host)  # one machine: 8 ranks share it
    share = make_plan(_offload_cfg(), world_size=1, host_memory=host / 8)
    assert eight.attention_layers == share.attention_layers < alone.attention_layers
    # two machines of 4 GPUs each: every machine's RAM is shared by 4
    two_nodes = make_plan(_offload_cfg(), world_size=8, local_ranks=4, host_memory=host)
    quarter = make_plan(_offload_cfg(), world_size=1, host_memory=host / 4)
    assert two_nodes.attention_layers == quarter.attention_layers > eight.attention_layers
    d = two_nodes.to_dict()["distributed"]
    assert d["gpus_per_node"] == 4 and d["host_memory_per_rank_gib"] == 400.0


def test_run_plan_refuses_pinned_memory_over_the_ranks_share():
    cfg = _offload_cfg()
    long = [8192] * 64
    kw = {"on_cuda": True, "attn": "flash_attention_2", "gpu_memory": 139 * GIB}
    alone = plan_run(cfg, long, **kw, host_memory=300 * GIB)
    assert not any("host memory" in p for p in alone.problems)
    crowded = plan_run(cfg, long, **kw, host_memory=300 * GIB, world_size=8, local_ranks=8)
    assert crowded.host_ranks == 8 and crowded.host_available == pytest.approx(300 * GIB / 8)
    assert any("share of the 300 GiB" in p and "8 processes" in p for p in crowded.problems)


def test_offloader_allowance_divides_by_local_world_size(monkeypatch):
    from legaltune.distributed.env import local_world_size
    from legaltune.speed import policy

    monkeypatch.setattr(policy, "host_memory_available", lambda: 64 * GIB)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    # what apply_lora passes: the ranks a launcher started on this node
    assert policy.attention_host_allowance(local_world_size()) == policy.HOST_FRACTION * 64 * GIB
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert policy.attention_host_allowance(local_world_size()) == policy.HOST_FRACTION * 16 * GIB
