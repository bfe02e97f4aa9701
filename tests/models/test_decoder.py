"""Decoders on tiny presets: packing and RoPE ids (parity with diffusers, docs/upstream.md §3.3 example), conditioning,
training forward, fp8 storage mechanics, config validation."""

import pytest
import torch
from diffusers import FluxPipeline

from nexusgen.flow import decoder_training_loss
from nexusgen.models.decoder import (
    DECODER_PRESETS,
    DecoderConfig,
    EditingDecoder,
    GenerationDecoder,
    editing_context_ids,
    generation_context_ids,
    image_ids,
)
from nexusgen.models.memory import (
    FP8_DTYPE,
    Fp8Linear,
    enable_fp8_storage,
    fp8_linear_count,
    is_on,
    parameter_bytes,
    place,
)

TINY = DECODER_PRESETS["tiny"]


def test_image_ids_match_diffusers():
    expected_ids = FluxPipeline._prepare_latent_image_ids(1, 3, 4, "cpu", torch.float32)
    assert torch.equal(image_ids((6, 8)), expected_ids)


def test_editing_context_ids_hand_computed():
    # docs/upstream.md §3.3 at 512x512 (latent 64x64): target 9x9 -> (0, r*64/18, c*64/18); reference 18x18 ->
    # (1, r*64/36, c*64/36).
    ids = editing_context_ids((9, 9), (18, 18), (64, 64))
    assert ids.shape == (81 + 324, 3)
    target, reference = ids[:81].view(9, 9, 3), ids[81:].view(18, 18, 3)
    for r, c in [(0, 0), (0, 8), (3, 5), (8, 8)]:
        assert target[r, c].tolist() == pytest.approx([0.0, r * 64 / 18, c * 64 / 18])
    for r, c in [(0, 0), (17, 0), (4, 11), (17, 17)]:
        assert reference[r, c].tolist() == pytest.approx([1.0, r * 64 / 36, c * 64 / 36])
    # non-square latent and grids: each axis scales by its own size
    odd = editing_context_ids((2, 4), (3, 6), (32, 48))
    assert odd[5].tolist() == pytest.approx([0.0, 1 * 16 / 2, 1 * 24 / 4])
    assert odd[8 + 7].tolist() == pytest.approx([1.0, 1 * 16 / 3, 1 * 24 / 6])


def test_generation_condition_and_pooled_vector():
    torch.manual_seed(0)
    decoder = GenerationDecoder(TINY).eval()
    embeds = torch.randn(2, 5, TINY.embed_dim)
    condition = decoder.condition(embeds)
    assert condition.context.shape == (2, 5, TINY.context_dim)
    assert condition.context_ids.shape == (5, 3) and condition.context_ids.abs().sum() == 0
    x, t = torch.randn(2, 16, 4, 4), torch.tensor([0.9, 0.2])
    with torch.no_grad():
        before = decoder(x, t, embeds)
        decoder.pooled_embeds.normal_()
        after = decoder(x, t, embeds)
    assert before.shape == x.shape
    assert (before - after).abs().max() > 1e-5  # the stored pooled vector reaches the DiT
    assert "pooled_embeds" in decoder.state_dict()
    with pytest.raises(ValueError):
        decoder.condition(torch.randn(2, 5, TINY.embed_dim + 1))


def test_grid_generation_context_ids_place_tokens_as_editing_targets():
    # 3x3 tokens on a 12x12 latent (6x6 image tokens): token (r, c) at (0, 2r, 2c), as editing targets
    ids = generation_context_ids(9, (12, 12))
    assert ids[5].tolist() == [0.0, 2.0, 4.0]
    assert torch.equal(ids, editing_context_ids((3, 3), (1, 1), (12, 12))[:9])
    with pytest.raises(ValueError, match="square"):
        generation_context_ids(6, (12, 12))
    with pytest.raises(ValueError, match="latent size"):
        generation_context_ids(9, None)


def test_context_ids_decide_whether_token_order_matters():
    # Zero ids: the DiT cannot tell context tokens apart by place, so shuffling them leaves the velocity
    # unchanged; grid ids tie each token to a place, so the same shuffle changes it.
    torch.manual_seed(0)
    x, t = torch.randn(1, 16, 4, 4), torch.tensor([0.6])
    embeds = torch.randn(1, 4, TINY.embed_dim)
    shuffled = embeds[:, [3, 1, 0, 2]]
    for ids, moves in (("zero", False), ("grid", True)):
        torch.manual_seed(1)
        decoder = GenerationDecoder(DecoderConfig(**{**TINY.to_dict(), "generation_context_ids": ids})).eval()
        with torch.no_grad():
            change = (decoder(x, t, embeds) - decoder(x, t, shuffled)).abs().max()
        assert (change > 1e-4) == moves, (ids, float(change))
    with pytest.raises(ValueError, match="generation_context_ids"):
        DecoderConfig(**{**TINY.to_dict(), "generation_context_ids": "spatial"})


def test_editing_condition_layout():
    torch.manual_seed(0)
    decoder = EditingDecoder(TINY).eval()
    embeds, reference = torch.randn(1, 4, TINY.embed_dim), torch.randn(1, 6, TINY.embed_dim)
    condition = decoder.condition(embeds, latent_size=(8, 8), reference_embeds=reference,
                                  reference_grid=(2, 3), target_grid=(2, 2))
    assert condition.context.shape == (1, 10, TINY.context_dim)
    assert torch.equal(condition.context_ids, editing_context_ids((2, 2), (2, 3), (8, 8)))
    with pytest.raises(ValueError):
        decoder.condition(embeds, latent_size=(8, 8), reference_embeds=reference.expand(2, -1, -1),
                          reference_grid=(2, 3), target_grid=(2, 2))


@pytest.mark.parametrize("kind", ["generation", "editing"])
def test_training_forward_reaches_every_trainable_part(kind):
    torch.manual_seed(0)
    extra = {}
    if kind == "generation":
        decoder = GenerationDecoder(TINY)
    else:
        decoder = EditingDecoder(TINY)
        extra = dict(reference_embeds=torch.randn(2, 9, TINY.embed_dim), reference_grid=(3, 3),
                     target_grid=(2, 2))
    latents = torch.randn(2, 16, 4, 4)
    out = decoder_training_loss(decoder, latents, torch.randn(2, 4, TINY.embed_dim),
                                generator=torch.Generator().manual_seed(0), **extra)
    out["loss"].backward()
    connector = decoder.adapter if kind == "generation" else decoder.merger
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in connector.parameters())
    assert decoder.transformer.x_embedder.weight.grad.abs().sum() > 0
    assert out["t"].shape == (2,) and out["loss"].ndim == 0


def test_conditioning_dropout_zeroes_whole_samples():
    from nexusgen.flow import drop_condition

    embeds = torch.randn(64, 3, 4) + 5
    dropped = drop_condition(embeds, 0.5, torch.Generator().manual_seed(0))
    zero = (dropped == 0).flatten(1).all(1)
    kept = (dropped == embeds).flatten(1).all(1)
    assert bool((zero | kept).all()) and 16 < int(zero.sum()) < 48
    assert drop_condition(embeds, 0.0, None) is embeds
    with pytest.raises(ValueError):
        drop_condition(embeds, 1.5, None)


def test_fp8_storage_mechanics():
    torch.manual_seed(0)
    decoder = GenerationDecoder(TINY).eval()
    x, t, embeds = torch.randn(2, 16, 4, 4), torch.tensor([0.5, 0.8]), torch.randn(2, 4, TINY.embed_dim)
    with torch.no_grad():
        reference = decoder(x, t, embeds)
    full_bytes = parameter_bytes(decoder.transformer)
    linears = fp8_linear_count(decoder.transformer)[1]
    enable_fp8_storage(decoder.transformer, compute_dtype=torch.float32)
    assert fp8_linear_count(decoder.transformer) == (linears, 0)  # every Linear, AdaLN ones included
    block = decoder.transformer.transformer_blocks[0]
    for layer in (block.attn.to_q, block.norm1.linear, block.norm1_context.linear,
                  decoder.transformer.single_transformer_blocks[0].norm.linear, decoder.transformer.norm_out.linear):
        assert isinstance(layer, Fp8Linear) and layer.weight.element_size() == 1 and layer.scale > 0
    assert block.attn.norm_q.weight.dtype == torch.float32  # norms' own weights are not quantized
    assert parameter_bytes(decoder.transformer) < 0.3 * full_bytes
    with torch.no_grad():
        out = decoder(x, t, embeds)
    relative = float((out - reference).norm() / reference.norm())
    assert 0 < relative < 0.1  # e4m3 keeps 3 mantissa bits: close, not equal


def test_fp8_layer_is_the_scaled_up_cast_and_survives_dtype_casts():
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 4)
    with torch.no_grad():
        linear.weight.mul_(1000)  # far above e4m3's 448: only a scale keeps it
    layer = Fp8Linear.from_linear(linear)
    stored = layer.weight.view(FP8_DTYPE).float() * layer.scale
    assert torch.allclose(stored, linear.weight, rtol=0.07)  # 3 mantissa bits: within 1/16
    x = torch.randn(3, 8)
    assert torch.allclose(layer(x), torch.nn.functional.linear(x, stored, linear.bias), atol=1e-4)
    layer.to(torch.bfloat16)  # what NexusGen's constructor does to every part: must not undo the storage
    assert layer.weight.dtype == torch.uint8 and layer.bias.dtype == torch.bfloat16
    assert layer(x.bfloat16()).dtype == torch.bfloat16
    with torch.device("meta"):
        big = torch.nn.Linear(3072, 12288)
    assert Fp8Linear.from_linear(big).weight.element_size() == 1  # byte counts on the meta device


def test_place_moves_only_a_module_that_is_elsewhere():
    module = torch.nn.Linear(2, 2)
    assert is_on(module, torch.device("cpu")) and not is_on(module, torch.device("meta"))
    assert place(module, torch.device("meta")).weight.device.type == "meta"
    module.to = None
    assert place(module, torch.device("meta")) is module


def test_config_validation():
    with pytest.raises(ValueError):
        DecoderConfig(embed_dim=8, context_dim=8, pooled_dim=4, num_layers=1, num_single_layers=1,
                      num_attention_heads=2, attention_head_dim=16, axes_dims_rope=(4, 4, 4))
    with pytest.raises(ValueError):
        EditingDecoder(DecoderConfig(**{**TINY.to_dict(), "merger": None}))
    assert DecoderConfig(**TINY.to_dict()) == TINY  # JSON round trip of the nested config
