"""Several processes training one run: torchrun / accelerate launch / `legaltune train --nproc`.

The distribution itself is PyTorch's (torch.distributed, DDP, FSDP2) as accelerate and the
transformers Trainer drive it; this package decides what legaltune's own parts do about it: which
rank writes the run directory, how the config maps onto the Trainer's arguments, how the launch
command re-executes itself per rank, and how a node's host memory is shared by its ranks.
"""
