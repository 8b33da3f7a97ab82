"""Run under torchrun (gloo, CPU) by tests/test_distributed.py: legaltune's model under FSDP2 and DDP.

accelerate turns FSDP on only for GPUs, so the Trainer cannot run it here; this drives the same
pieces one level down: the config's ``distributed:`` section through legaltune.distributed.strategy,
transformers' reading of it (SFTConfig → accelerate's FSDP plugin) and accelerate's own
``fsdp2_prepare_model`` (``fully_shard`` per decoder layer), over a model with the speed engine on
(fused LoRA, compiled layers with the aot_eager backend, offloaded checkpointing, TRL's fused LM
head). A third copy is wrapped in DistributedDataParallel with the find_unused_parameters the
strategy chose (what accelerate does with it under ddp): the Trainer runs of the test cannot
compile layers on a CPU without a C compiler. Every rank trains its half of a batch for two AdamW
steps; an unwrapped copy trains the whole batch. Usage:
torchrun --nproc-per-node 2 fsdp_cpu_driver.py MODEL_DIR OUT.json
"""

from __future__ import annotations

import json
import sys
import tempfile
from types import SimpleNamespace

import torch
import torch.distributed as dist


def main(model_dir: str, out_path: str) -> None:
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig
    from trl.trainer.utils import add_fused_lm_head

    import legaltune.speed.apply as speed_apply
    from legaltune.config.load import build_config
    from legaltune.distributed.strategy import distributed_args
    from legaltune.model.lora import apply_lora
    from legaltune.plan.core import make_plan
    from legaltune.speed.layers import find_decoder_layers
    from legaltune.speed.state import checkpointing_mode, speed_report

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    # compiled layers without a C compiler: dynamo traces them as for inductor, aot_eager runs the graph
    compile_layers = speed_apply.compile_layers
    speed_apply.compile_layers = lambda model, backend="inductor": compile_layers(model, backend="aot_eager")

    raw = {
        "model": {"model_name": model_dir, "device_map": "cpu", "dtype": "float32"},
        "lora": {
            "r": 4,
            "lora_alpha": 8,
            "target_modules": [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
            "use_gradient_checkpointing": "unsloth",
        },
        "optimization": {"gradient_checkpointing": True},
        "speed": {"mode": "fast", "compile": True},
        "distributed": {"strategy": "fsdp"},
    }
    cfg = build_config(raw)

    def build():
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model.config.use_cache = False
        add_fused_lm_head(model)  # as SFTTrainer does, before PEFT
        torch.manual_seed(1)
        peft = apply_lora(model, cfg.lora, gradient_checkpointing=True, speed=cfg.speed)
        torch.manual_seed(2)
        with torch.no_grad():  # PEFT's zero lora_B would give lora_A no gradient to compare
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
        return peft.train()

    reference, sharded, replicated = build(), build(), build()
    report = speed_report(sharded)
    start = {n: p.detach().clone() for n, p in reference.named_parameters() if p.requires_grad}

    # this process has no GPU; the strategy refuses fsdp on CPUs only for the Trainer, which would not shard
    d = distributed_args(cfg, sharded, world_size=world, on_cuda=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, use_cpu=True, report_to="none", **d.trainer_args)
    plugin_args = dict(args.fsdp_plugin_args)
    plugin = FullyShardedDataParallelPlugin(**plugin_args)
    accelerator = SimpleNamespace(
        state=SimpleNamespace(fsdp_plugin=plugin),
        torch_device_mesh=None,
        mixed_precision="no",
        is_main_process=rank == 0,
        device=torch.device("cpu"),
    )
    sharded = fsdp2_prepare_model(accelerator, sharded)
    ddp_cfg = build_config({**raw, "distributed": {"strategy": "ddp"}})
    unused = distributed_args(ddp_cfg, replicated, world_size=world, on_cuda=False).trainer_args
    replicated = torch.nn.parallel.DistributedDataParallel(
        replicated, find_unused_parameters=unused["ddp_find_unused_parameters"]
    )

    g = torch.Generator().manual_seed(3)
    vocab = reference.config.vocab_size
    batches = [torch.randint(0, vocab, (4, 24), generator=g) for _ in range(2)]

    def loss_of(model, ids, share: int):
        out = model(input_ids=ids, labels=ids, fused_lm_head=True)
        count = ids.shape[0] // share * share * (ids.shape[1] - 1)  # every position but the last is labelled
        # SFTTrainer's loss: token sum over the global token count, times the processes (gradients are averaged)
        return -out.log_probs.sum() / (count * share) * share

    def adamw(model):
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    opt_ref, opt_sh, opt_ddp = adamw(reference), adamw(sharded), adamw(replicated)
    grad_diff = loss_diff = 0.0
    for step, ids in enumerate(batches):
        ref_loss = loss_of(reference, ids, 1)
        ref_loss.backward()
        mine = ids[2 * rank : 2 * rank + 2]
        sh_loss = loss_of(sharded, mine, world)
        sh_loss.backward()
        loss_of(replicated, mine, world).backward()
        global_loss = sh_loss.detach().clone()
        dist.all_reduce(global_loss)
        loss_diff = max(loss_diff, abs(float(global_loss / world) - float(ref_loss.detach())))
        if step == 0:
            ref_grads = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
            for n, p in sharded.named_parameters():
                if p.requires_grad:
                    full = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
                    grad_diff = max(grad_diff, float((full - ref_grads[n]).abs().max()))
        for opt in (opt_ref, opt_sh, opt_ddp):
            opt.step()
            opt.zero_grad()

    ref_params = {n: p for n, p in reference.named_parameters() if p.requires_grad}
    param_diff, lora_dtypes, moved = 0.0, set(), 0.0
    for n, p in sharded.named_parameters():
        if p.requires_grad:
            full = p.full_tensor() if isinstance(p, DTensor) else p
            param_diff = max(param_diff, float((full.detach() - ref_params[n].detach()).abs().max()))
            lora_dtypes.add(str(p.dtype))
    ddp_diff = max(
        float((p.detach() - ref_params[n].detach()).abs().max())
        for n, p in replicated.module.named_parameters()
        if p.requires_grad
    )
    for n, p in start.items():  # did training move the adapter at all?
        moved = max(moved, float((p - ref_params[n].detach()).abs().max()))

    frozen = [(n, p) for n, p in sharded.named_parameters() if not p.requires_grad]
    local_bytes = sum(
        (p.to_local() if isinstance(p, DTensor) else p).numel() * p.element_size() for _, p in frozen
    )
    plan = make_plan(cfg, world_size=world)
    (plan_weights,) = [v for k, v in plan.memory.components.items() if k.startswith("weights")]
    layers = find_decoder_layers(sharded)
    result = {
        "rank": rank,
        "plugin": {k: v for k, v in plugin_args.items() if isinstance(v, (bool, int, str))},
        "layers_sharded": all(isinstance(layer, FSDPModule) for layer in layers),
        "root_sharded": isinstance(sharded, FSDPModule),
        "frozen_all_dtensor": all(isinstance(p, DTensor) for _, p in frozen),
        "local_frozen_bytes": local_bytes,
        "plan_weights_bytes": plan_weights,
        "lora_dtypes": sorted(lora_dtypes),
        "fused_lora": report.fused_lora,
        "compiled_layers": report.compiled_layers,
        "checkpointing": checkpointing_mode(sharded),
        "loss_diff": loss_diff,
        "grad_diff": grad_diff,
        "param_diff": param_diff,
        "ddp_param_diff": ddp_diff,
        "ddp_find_unused_parameters": unused["ddp_find_unused_parameters"],
        "ddp_compiled_layers": speed_report(replicated.module).compiled_layers,
        "moved": moved,
        "notes": d.notes,
    }
    # a Ctrl-C that reached rank 1 only: every rank saves and stops after this step
    from transformers import TrainerControl

    from legaltune.train.callbacks import InterruptCallback

    stops = []
    for flagged in ({1}, set()):
        cb, control = InterruptCallback(), TrainerControl()
        cb.requested = rank in flagged
        cb.on_step_end(None, None, control)
        stops.append(bool(control.should_training_stop and control.should_save and cb.requested))
    result["interrupt_stops"] = stops
    gathered = [None] * world
    dist.all_gather_object(gathered, result)
    if rank == 0:
        with open(out_path, "w", encoding="utf-8") as fh:
            json.dump(gathered, fh, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
