"""Casting and building without losing precision or memory: rotary frequencies stay fp32 under every cast,
fp8 storage survives casts, parameters can be built on the meta device and materialised in place."""

import torch

from nexusgen.loading.folder import build_random_model
from nexusgen.models.memory import enable_fp8_storage
from nexusgen.models.placement import (
    cast_module,
    derived_buffer_names,
    floating_dtypes,
    materialize_random_,
    meta_parameters,
    tensor_bytes,
)


def test_cast_keeps_rotary_frequencies_fp32_in_every_part():
    parts = build_random_model("tiny")
    for module in parts.modules().values():
        cast_module(module, dtype=torch.bfloat16)
    names = {(part, name) for part, module in parts.modules().items() for name in derived_buffer_names(module)}
    assert {n.rsplit(".", 1)[-1] for _, n in names} == {"inv_freq", "original_inv_freq"}
    assert {p for p, _ in names} == {"autoregressive", "editing_decoder"}  # LLM, ViT and the merger
    for part, name in names:
        assert parts.modules()[part].get_buffer(name).dtype == torch.float32, (part, name)
    ar = parts.ar_model
    assert ar.vision_head.weight.dtype == torch.bfloat16 and set(floating_dtypes(ar)) == {torch.bfloat16,
                                                                                         torch.float32}
    blanket = build_random_model("tiny").ar_model.to(torch.bfloat16)  # what a plain .to() does
    assert blanket.vlm.model.language_model.rotary_emb.inv_freq.dtype == torch.bfloat16


def test_cast_leaves_fp8_storage_and_moves_without_copies():
    decoder = build_random_model("tiny").generation_decoder
    enable_fp8_storage(decoder.transformer)
    cast_module(decoder, dtype=torch.bfloat16)
    assert decoder.transformer.proj_out.weight.dtype == torch.uint8  # fp8 bits untouched
    weight = decoder.adapter[0].weight
    same = weight.data_ptr()
    cast_module(decoder, dtype=torch.bfloat16)  # already there: nothing is copied
    assert decoder.adapter[0].weight.data_ptr() == same


def test_meta_parameters_then_random_values_in_place():
    from nexusgen.models.autoregressive import ARConfig, NexusGenARModel

    config = ARConfig.from_preset("tiny")
    with meta_parameters():
        model = NexusGenARModel(config)
    assert all(p.device.type == "meta" for p in model.parameters())
    rotary = model.vlm.model.language_model.rotary_emb.inv_freq
    assert rotary.device.type == "cpu" and rotary.dtype == torch.float32  # computed as in a normal build
    reference = NexusGenARModel(config).vlm.model.language_model.rotary_emb.inv_freq
    assert torch.equal(rotary, reference)
    full = tensor_bytes(model)
    assert tensor_bytes(model, torch.bfloat16) < 0.51 * full + 1000  # sizes on the meta device, per dtype
    materialize_random_(model, "cpu", torch.bfloat16, seed=0)
    assert model.vision_head.weight.dtype == torch.bfloat16 and rotary.dtype == torch.float32
    assert model.vlm.model.language_model.norm.weight.eq(1).all()  # norm scales 1, weights N(0, 0.02)
    assert 0.015 < float(model.vision_head.weight.detach().float().std()) < 0.025
    assert model.vlm.model.language_model.rotary_emb.inv_freq.dtype == torch.float32
