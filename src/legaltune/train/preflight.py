"""Checks of the machine against the config that would otherwise fail minutes into `legaltune train`."""

from __future__ import annotations

import importlib.util

from legaltune.config.schema import Config
from legaltune.errors import UserError


def needs_bitsandbytes(optim: str) -> bool:
    """transformers' 8-bit and paged optimizers (adamw_8bit, paged_adamw_32bit, lion_8bit, …) are bitsandbytes'."""
    name = optim.lower()
    return "8bit" in name or name.startswith("paged_") or "bnb" in name


def check_environment(cfg: Config) -> None:
    """Raise a UserError naming the config key when this machine cannot run what the config asks."""
    import torch

    from legaltune.distributed.env import world_size

    if world_size() > 1 and cfg.training.method != "sft":
        # their trainers (reference adapter, sampling) have not been run on several processes here
        raise UserError(
            f"training.method {cfg.training.method} trains on one process; several processes (torchrun, "
            "--nproc) are built and tested for sft. Run it on one GPU (CUDA_VISIBLE_DEVICES=0 legaltune train CONFIG)"
        )
    optim = cfg.optimization.optim
    if needs_bitsandbytes(optim):
        missing = []
        if importlib.util.find_spec("bitsandbytes") is None:
            missing.append("bitsandbytes is not installed (pip install bitsandbytes)")
        if not torch.cuda.is_available():
            missing.append("there is no CUDA GPU (bitsandbytes' optimizers run on CUDA)")
        if missing:
            raise UserError(
                f"optimization.optim: {optim} needs bitsandbytes on a CUDA GPU, but {' and '.join(missing)}; "
                "use optim: adamw_torch (the same AdamW update with 32-bit states; a LoRA adapter's "
                "optimizer state is small), or run on a CUDA machine with bitsandbytes"
            )
