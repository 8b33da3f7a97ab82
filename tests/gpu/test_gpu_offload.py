"""GPU checks of offloaded checkpointing's backward read-ahead (``pytest -m gpu``).

On a CPU packing is the identity, so only a GPU exercises the copies: the layer inputs that come
back ahead of need (on the side stream) must be the ones backward needs, at batch 1 and > 1, over
several steps (pinned buffers and GPU blocks are reused between steps).
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from legaltune.speed.layers import find_decoder_layers
from legaltune.speed.offload import enable_offloaded_checkpointing
from legaltune.speed.state import checkpointing_mode
from tests.conftest import loss_and_grads, randomize_lora_b
from tests.gpu.test_gpu_speed import PROJ, _llama

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _model(layers: int, offload: bool, read_ahead: bool = True):
    torch.manual_seed(0)
    model = get_peft_model(
        _llama(layers=layers, hidden=512, dtype=torch.float32),
        LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=PROJ),
    )
    randomize_lora_b(model, 0.02, seed=1)
    if offload:
        enable_offloaded_checkpointing(model, read_ahead=read_ahead)
    model.train()
    return model


@pytest.mark.parametrize("batch,seq", [(1, 1024), (4, 512)])
def test_read_ahead_gives_the_gradients_of_no_checkpointing(batch, seq):
    layers = 4
    ids = torch.randint(
        3, 1024, (batch, seq), device="cuda", generator=torch.Generator("cuda").manual_seed(0)
    )
    ref = _model(layers, offload=False)
    ahead = _model(layers, offload=True, read_ahead=True)
    on_demand = _model(layers, offload=True, read_ahead=False)
    _, ref_loss, ref_grads = loss_and_grads(ref, ids)
    offloader = find_decoder_layers(ahead)[0].__dict__["_legaltune_offloader"]
    for step in range(3):  # later steps reuse pinned host buffers and GPU blocks
        for model in (ahead, on_demand):
            _, loss, grads = loss_and_grads(model, ids)
            torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
            for name, g in ref_grads.items():
                torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=f"step {step}: {name}")
    # every layer input but the last layer's (backward's first) came back ahead of need
    assert offloader.read_aheads == 3 * (layers - 1)
    assert find_decoder_layers(on_demand)[0].__dict__["_legaltune_offloader"].read_aheads == 0


@pytest.mark.parametrize("batch,seq", [(1, 2048), (4, 512)])
def test_kept_attention_half_gives_the_gradients_of_no_checkpointing(batch, seq):
    """offload_attention: every tensor the attention half saves goes to the host (strided q/k/v
    views included) and comes back ahead of need; RoPE's cos/sin (> 1 MiB at batch 1 x 2048, saved
    by every layer) stay on the GPU instead of sending the read-ahead back to the first layer."""
    from legaltune.speed.split_layer import layer_halves

    layers = 4
    ids = torch.randint(
        3, 1024, (batch, seq), device="cuda", generator=torch.Generator("cuda").manual_seed(0)
    )
    ref = _model(layers, offload=False)
    split = _model(layers, offload=False)
    enable_offloaded_checkpointing(split, split=layer_halves)
    assert "attention kept" in checkpointing_mode(split.get_base_model())
    _, ref_loss, ref_grads = loss_and_grads(ref, ids)
    offloader = find_decoder_layers(split)[0].__dict__["_legaltune_offloader"]
    for step in range(3):
        before, bursts = offloader.read_aheads, offloader.bursts
        _, loss, grads = loss_and_grads(split, ids)
        # copies out are issued per layer half (one stream wait and event each), not per tensor
        assert offloader.bursts - bursts == 2 * layers
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
        for name, g in ref_grads.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=f"step {step}: {name}")
        assert offloader.kept_bytes == 0  # nothing large stayed on the GPU for want of a dense layout
        # each layer moved its attention activations and its MLP input: several tensors per layer,
        # and all but the first tensors backward reaches came back ahead of need
        assert offloader.offloaded_bytes > layers * 3 * batch * seq * 512 * 4
        assert offloader.read_aheads - before >= layers * 3


def test_host_allowance_keeps_attention_in_the_first_layers_only():
    """speed.offload_attention auto's host-memory bound: with room for about two split layers, the
    first two keep their attention half and the others run whole; gradients as without checkpointing."""
    from legaltune.speed.split_layer import layer_halves

    layers, batch, seq = 4, 1, 2048
    ids = torch.randint(
        3, 1024, (batch, seq), device="cuda", generator=torch.Generator("cuda").manual_seed(0)
    )
    ref = _model(layers, offload=False)
    _, ref_loss, ref_grads = loss_and_grads(ref, ids)
    input_bytes = 1 << 22  # 1 x 2048 x 512 fp32: 4 MiB a layer input
    probe = _model(layers, offload=False)
    enable_offloaded_checkpointing(probe, split=layer_halves)
    loss_and_grads(probe, ids)
    split_bytes = find_decoder_layers(probe)[0].__dict__["_legaltune_offloader"]._split_bytes
    assert split_bytes > 2 * input_bytes
    bounded = _model(layers, offload=False)
    allowance = 2 * split_bytes + 2 * input_bytes
    enable_offloaded_checkpointing(bounded, split=layer_halves, host_allowance=allowance)
    offloader = find_decoder_layers(bounded)[0].__dict__["_legaltune_offloader"]
    for _ in range(2):
        _, loss, grads = loss_and_grads(bounded, ids)
        assert offloader.attention_recomputed == 2
        assert offloader._pinned <= allowance
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
        for name, g in ref_grads.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_pinned_arena_holds_every_copy_and_is_reused_by_later_steps():
    """The offloader's copies go to registered arena blocks (not PyTorch's pinned allocator), the
    blocks made by the longest micro-batch serve the shorter and equal ones after it, and the
    gradients at each length are those of no checkpointing."""
    from legaltune.speed.split_layer import layer_halves

    layers = 4
    ref = _model(layers, offload=False)
    split = _model(layers, offload=False)
    enable_offloaded_checkpointing(split, split=layer_halves)
    offloader = find_decoder_layers(split)[0].__dict__["_legaltune_offloader"]
    reserved = []
    for seq in (2048, 512, 2048, 1024):  # mixed-length micro-batches
        ids = torch.randint(
            3, 1024, (2, seq), device="cuda", generator=torch.Generator("cuda").manual_seed(seq)
        )
        _, ref_loss, ref_grads = loss_and_grads(ref, ids)
        _, loss, grads = loss_and_grads(split, ids)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
        for name, g in ref_grads.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=f"seq {seq}: {name}")
        assert offloader.arena is not None and not offloader._arena_failed
        reserved.append(offloader.arena.reserved)
    assert reserved[0] >= offloader.offloaded_bytes > 0
    assert reserved == [reserved[0]] * 4, reserved  # nothing registered after the first, longest step
