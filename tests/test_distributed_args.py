"""distributed: in the config → the Trainer's DDP / FSDP2 arguments, and the config rules around it."""

import pytest
import torch

from legaltune.config.fields import ConfigError
from legaltune.config.load import build_config
from legaltune.distributed.strategy import distributed_args, unused_parameter_reason
from legaltune.errors import UserError
from legaltune.model.lora import apply_lora
from tests.conftest import make_tiny_llama


def _cfg(**over):
    raw = {
        "model": {"model_name": "unused", "device_map": "cpu"},
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]},
    }
    for sec, kv in over.items():
        raw.setdefault(sec, {}).update(kv)
    return build_config(raw)


def _lora_model(tokenizer, cfg):
    return apply_lora(make_tiny_llama(len(tokenizer)), cfg.lora, gradient_checkpointing=False)


def test_lora_on_the_decoder_layers_needs_no_unused_parameter_search(tokenizer):
    cfg = _cfg()
    model = _lora_model(tokenizer, cfg)
    assert unused_parameter_reason(model) is None
    d = distributed_args(cfg, model, world_size=2, on_cuda=False)
    assert d.strategy == "ddp" and d.trainer_args["ddp_find_unused_parameters"] is False
    assert d.trainer_args["ddp_timeout"] == 30 * 60
    assert "find_unused_parameters false" in d.notes[0]
    # and the claim behind it holds: one forward/backward gives every trainable tensor a gradient
    ids = torch.randint(0, len(tokenizer), (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_trainable_parameter_outside_the_layers_turns_the_search_on(tokenizer):
    cfg = _cfg()
    model = _lora_model(tokenizer, cfg)
    # e.g. a projector of another modality that text batches never run
    model.base_model.model.model.register_parameter("projector", torch.nn.Parameter(torch.zeros(3)))
    reason = unused_parameter_reason(model)
    assert reason is not None and "projector" in reason
    d = distributed_args(cfg, model, world_size=2, on_cuda=False)
    assert d.trainer_args["ddp_find_unused_parameters"] is True and "projector" in d.notes[0]
    explicit = distributed_args(
        _cfg(distributed={"find_unused_parameters": False}), model, world_size=2, on_cuda=False
    )
    assert explicit.trainer_args["ddp_find_unused_parameters"] is False


def test_adapters_on_experts_turn_the_search_on(tokenizer):
    cfg = _cfg()
    model = _lora_model(tokenizer, cfg)
    model.config.num_local_experts = 8
    assert unused_parameter_reason(model) is None  # no adapter on an expert
    layer = model.base_model.model.model.layers[0].mlp
    layer.experts = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    assert "expert" in unused_parameter_reason(model)


def test_fsdp_maps_onto_fsdp2_arguments(tokenizer):
    """(transformers' reading of them into accelerate's plugin is checked in tests/test_distributed.py,
    where a process group exists)"""
    cfg = _cfg(distributed={"strategy": "fsdp", "fsdp_reshard_after_forward": False, "backend": "nccl"})
    model = _lora_model(tokenizer, cfg)
    d = distributed_args(cfg, model, world_size=4, on_cuda=True)
    assert d.strategy == "fsdp" and d.trainer_args["ddp_backend"] == "nccl"
    assert "ddp_find_unused_parameters" not in d.trainer_args
    fsdp = d.trainer_args["fsdp_config"]
    assert d.trainer_args["fsdp"] is True and fsdp["version"] == 2
    assert fsdp["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert fsdp["reshard_after_forward"] is False and fsdp["activation_checkpointing"] is False


def test_one_process_gets_no_distributed_arguments(tokenizer):
    cfg = _cfg(distributed={"strategy": "fsdp"})
    d = distributed_args(cfg, _lora_model(tokenizer, cfg), world_size=1, on_cuda=False)
    assert d.strategy == "single" and d.trainer_args == {}


def test_fsdp_on_cpu_processes_is_refused_with_the_key(tokenizer):
    cfg = _cfg(distributed={"strategy": "fsdp"})
    with pytest.raises(UserError, match="distributed.strategy fsdp.*set distributed.strategy: ddp"):
        distributed_args(cfg, _lora_model(tokenizer, cfg), world_size=2, on_cuda=False)


@pytest.mark.parametrize(
    ("quant", "key", "says"),
    [
        ({"load_in_8bit": True}, "distributed.strategy", "8-bit"),
        (
            {"load_in_4bit": True, "bnb_4bit_quant_storage": "bf16"},
            "quantization.bnb_4bit_quant_storage",
            "#1945",
        ),
    ],
)
def test_fsdp_with_bases_bitsandbytes_cannot_shard_is_a_config_error(quant, key, says):
    with pytest.raises(ConfigError) as err:
        _cfg(quantization=quant, distributed={"strategy": "fsdp"})
    (problem,) = err.value.problems
    assert problem.path == key and says in problem.message and "ddp" in problem.fix


def test_4bit_with_uint8_storage_is_allowed_under_fsdp_and_any_storage_under_ddp():
    _cfg(quantization={"load_in_4bit": True}, distributed={"strategy": "fsdp"})
    cfg = _cfg(quantization={"load_in_4bit": True, "bnb_4bit_quant_storage": "bfloat16"})
    assert cfg.quantization.bnb_4bit_quant_storage == "bfloat16"


def test_unknown_strategy_is_named():
    with pytest.raises(ConfigError, match="distributed.strategy"):
        _cfg(distributed={"strategy": "deepspeed"})


def _ckpt(tmp_path, **state):
    from legaltune.run.checkpoint import Checkpoint

    path = tmp_path / "checkpoint-4"
    path.mkdir(parents=True, exist_ok=True)
    return Checkpoint(path, 4, sealed=True, state=state)


def test_resume_on_the_same_number_of_processes_says_nothing(tmp_path):
    from legaltune.run.world_check import check_world_size

    cfg = _cfg(training={"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2})
    ckpt = _ckpt(tmp_path, world_size=4, gradient_accumulation_steps=2)
    assert check_world_size(ckpt, {}, cfg, 4) == []


def test_resume_on_other_processes_keeping_the_effective_batch_continues(tmp_path):
    from legaltune.run.world_check import check_world_size

    ckpt = _ckpt(tmp_path, world_size=4, gradient_accumulation_steps=2)
    cfg = _cfg(
        training={"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4},
        data={"group_by_length": False},
    )
    notes = check_world_size(ckpt, {}, cfg, 2)
    assert "trained by 4 processes, this run has 2" in notes[0] and "stays 16" in notes[0]


def test_resume_changing_the_effective_batch_is_refused_with_the_fix(tmp_path):
    from legaltune.run.world_check import check_world_size

    ckpt = _ckpt(tmp_path, world_size=4, gradient_accumulation_steps=2)
    cfg = _cfg(
        training={"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2},
        data={"group_by_length": False},
    )
    with pytest.raises(
        UserError, match=r"effective batch of 16 .*effective batch of 8.*gradient_accumulation_steps=4"
    ):
        check_world_size(ckpt, {}, cfg, 2)
    # 4 → 3 processes: no GA keeps 16; only the original count continues the run
    with pytest.raises(UserError) as err:
        check_world_size(ckpt, {}, cfg, 3)
    assert "--nproc 4" in str(err.value) and "gradient_accumulation_steps=" not in str(err.value)


def test_resume_regrouping_length_groups_is_refused(tmp_path):
    from legaltune.run.world_check import check_world_size

    ckpt = _ckpt(tmp_path, world_size=2, gradient_accumulation_steps=1)
    cfg = _cfg(
        training={"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}
    )  # group_by_length on
    with pytest.raises(UserError, match="group_by_length"):
        check_world_size(ckpt, {}, cfg, 1)


def test_checkpoints_without_a_recorded_world_size_count_their_rng_files(tmp_path):
    from legaltune.run.world_check import checkpoint_world_size

    ckpt = _ckpt(tmp_path)
    assert checkpoint_world_size(ckpt) == 1
    for r in range(3):
        (ckpt.path / f"rng_state_{r}.pth").write_bytes(b"")
    assert checkpoint_world_size(ckpt) == 3
