"""The real model's widths on the CPU: stock-layout folders at real width and one block of depth (written
here: transformers Qwen2.5-VL-Instruct, diffusers FLUX.1-dev with CLIP and T5), assembled with
`nexusgen assemble`, then every task in bf16 and the bf16-vs-fp32 agreement that a blanket `.to(bf16)` breaks.

Widths: LLM 3584 with 28/4 heads and M-RoPE 16/24/24, ViT 1280, DiT 3072 = 24 x 128 with context 4096 and
pooled 768, T5 4096, CLIP 768, the FLUX VAE. Shrunk where only time and memory are at stake: one block each,
a byte-level vocabulary, the LLM's MLP 1024 wide (18944 real), small images, short negative contexts.
"""

import gc
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from nexusgen.api import NexusGen
from nexusgen.bench.stock_folders import write_qwen, write_stock_folders
from nexusgen.cli import main
from nexusgen.loading.autoregressive import load_autoregressive
from nexusgen.loading.decoders import load_editing_decoder, load_generation_decoder
from nexusgen.loading.folder import resolve_model
from nexusgen.loading.stock import find_flux, is_stock_qwen_folder, stock_autoregressive
from nexusgen.models.memory import Fp8Linear, fp8_linear_count, parameter_bytes

LONG_PROMPT = ("A long question about a picture: what is in the foreground, what is behind it, which colours "
               "dominate, where does the light come from, and what happened just before it was taken? ") * 4


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    return write_stock_folders(tmp_path_factory.mktemp("stock"), blocks=1, intermediate=1024)


@pytest.fixture(scope="module")
def model_dir(stock, tmp_path_factory):
    qwen, flux = stock
    out = tmp_path_factory.mktemp("assembled") / "model"
    assert main(["assemble", "--qwen", str(qwen), "--flux", str(flux), "--out", str(out), "--device", "cpu"]) == 0
    return out


def _inode(path):
    return os.stat(path).st_ino


def test_assembled_folder(model_dir, stock):
    qwen, flux = stock
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        assert _inode(model_dir / "autoregressive" / name) == _inode(qwen / name)  # linked, not copied
    dit = "diffusion_pytorch_model-00001-of-00002.safetensors"
    for part in ("generation_decoder", "editing_decoder"):
        assert _inode(model_dir / part / "transformer" / dit) == _inode(flux / "transformer" / dit)
    config = json.loads((model_dir / "nexusgen.json").read_text())
    assert config["parts"] == ["autoregressive", "generation_decoder", "editing_decoder", "vae"]
    assert config["sampling"]["guidance_scale"] == 3.0 and config["sampling"]["negative"] == "t5"
    assert config["reference_image_px"] == [504, 504] and config["dtype"] == "bfloat16"
    negative = load_file(str(model_dir / "negative.safetensors"))
    assert negative["prompt_embeds"].shape == (1, 512, 4096) and negative["prompt_embeds"].isfinite().all()
    pooled = load_file(str(model_dir / "generation_decoder/pooled.safetensors"))["pooled_embeds"]
    assert pooled.shape == (768,) and torch.equal(negative["pooled"][0], pooled)  # CLIP("") both
    heads = load_file(str(model_dir / "autoregressive/model-nexusgen-heads.safetensors"))
    assert heads["vision_head.weight"].shape == (3584, 3584) and heads["image_prefill_embeds.weight"].shape == (
        81, 3584)
    assert 0.018 < float(heads["vision_head.weight"].float().std()) < 0.022  # N(0, 0.02) as upstream
    merger = load_file(str(model_dir / "editing_decoder/merger.safetensors"))
    layer0 = {**load_file(str(qwen / "model-00001-of-00002.safetensors")),
              **load_file(str(qwen / "model-00002-of-00002.safetensors"))}
    for key in ("self_attn.q_proj.weight", "self_attn.k_proj.bias", "mlp.down_proj.weight", "input_layernorm.weight"):
        assert torch.equal(merger[f"layers.0.{key}"], layer0[f"model.layers.0.{key}"])  # the LLM's layer 0
    assert merger["projector.1.weight"].shape == (16384, 3584)
    assert set(load_file(str(model_dir / "generation_decoder/adapter.safetensors"))) == {
        "0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias", "4.weight", "4.bias"}


def test_stock_folders_are_recognised_and_refused_with_a_hint(stock, tmp_path, capsys):
    qwen, flux = stock
    assert is_stock_qwen_folder(qwen) and find_flux(flux).text_encoder_2 == flux / "text_encoder_2"
    with pytest.raises(ValueError, match="stock Qwen2.5-VL-Instruct folder.*nexusgen assemble"):
        resolve_model(qwen)
    assert main(["assemble", "--qwen", str(flux), "--flux", str(flux), "--out", str(tmp_path / "m")]) == 2
    assert "not a Qwen2.5-VL folder" in capsys.readouterr().err
    assert main(["assemble", "--qwen", str(qwen), "--flux", str(qwen), "--out", str(tmp_path / "m")]) == 2
    assert "not a FLUX.1-dev folder" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_both_tensor_name_layouts_load(tmp_path):
    """The published shards use pre-4.52 names, `save_pretrained` of transformers 5 writes new ones."""
    legacy = write_qwen(tmp_path / "legacy", intermediate=256, seed=3)
    new = write_qwen(tmp_path / "new", intermediate=256, new_names=True, seed=3)
    assert "model.layers.0.mlp.up_proj.weight" in load_file(str(legacy / "model-00001-of-00002.safetensors")) | \
        load_file(str(legacy / "model-00002-of-00002.safetensors"))
    a, _, _ = stock_autoregressive(legacy, "cpu", torch.bfloat16)
    b, _, _ = load_autoregressive(new, "cpu", torch.bfloat16, new_heads=True)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def _attention_and_rotary(model, ids):
    """Self-attention output (B, L, D) and the rotary (cos, sin) of a long prompt, float32."""
    mask = torch.ones_like(ids)
    positions = model.compute_positions(ids, mask, None)
    got = {}

    def keep(module, args, output):
        got["attention"] = output[0].float()

    layer = model.vlm.model.language_model.layers[0].self_attn
    handle = layer.register_forward_hook(keep)
    try:
        with torch.no_grad():
            model.language_model(model.embed_tokens(ids), mask, positions)
            embeds = model.embed_tokens(ids)
            cos, sin = model.vlm.model.language_model.rotary_emb(embeds, positions)
    finally:
        handle.remove()
    return got["attention"], cos.float(), sin.float()


def _relative(a, b, positions):
    return float(((a[0, positions] - b[0, positions]).norm(dim=-1) / b[0, positions].norm(dim=-1)).max())


def test_bf16_agrees_with_fp32_past_position_500_and_a_blanket_cast_does_not(model_dir):
    folder = model_dir / "autoregressive"
    full, tokenizer, _ = load_autoregressive(folder, "cpu", torch.float32)
    half, _, _ = load_autoregressive(folder, "cpu", torch.bfloat16)
    for name, buffer in half.named_buffers():  # LLM and ViT rotary frequencies
        assert buffer.dtype == torch.float32, name
    ids = torch.tensor([tokenizer(LONG_PROMPT).input_ids])
    assert ids.shape[1] > 600
    late = slice(500, None)
    reference = _attention_and_rotary(full, ids)
    fixed = _attention_and_rotary(half, ids)
    blanket = _attention_and_rotary(full.to(torch.bfloat16), ids)  # today's loaders: inv_freq in bf16 too
    del full, half
    gc.collect()
    # rotary cos/sin: computed in fp32 and rounded once to bf16 (<= 2^-8) vs angles off by up to a radian
    assert float((fixed[1][:, late] - reference[1][:, late]).abs().max()) < 0.01
    assert float((blanket[1][:, late] - reference[1][:, late]).abs().max()) > 0.5
    attention_fixed = _relative(fixed[0], reference[0], late)
    attention_blanket = _relative(blanket[0], reference[0], late)
    assert attention_fixed < 0.012  # bf16 rounding of weights and activations
    assert attention_blanket > 2 * attention_fixed and attention_blanket > 0.02


def _velocity(decoder, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 4, 4, generator=generator).to(dtype)
    embeds = torch.randn(1, 81, 3584, generator=generator).to(dtype)
    with torch.no_grad():
        if hasattr(decoder, "merger"):
            reference = torch.randn(1, 4, 3584, generator=generator).to(dtype)
            return decoder(x, torch.tensor([0.7]), embeds, reference_embeds=reference, reference_grid=(2, 2),
                           target_grid=(9, 9)).float()
        return decoder(x, torch.tensor([0.7]), embeds).float()


@pytest.mark.parametrize("loader", [load_generation_decoder, load_editing_decoder])
def test_decoders_in_bf16_agree_with_fp32(model_dir, loader, monkeypatch):
    import contextlib

    import nexusgen.models.decoder as decoder_module

    part = "generation_decoder" if loader is load_generation_decoder else "editing_decoder"
    reference = _velocity(loader(model_dir / part, "cpu", torch.float32), torch.float32)
    gc.collect()
    half = loader(model_dir / part, "cpu", torch.bfloat16)
    for name, buffer in half.named_buffers():
        if name.endswith("inv_freq"):
            assert buffer.dtype == torch.float32, name  # the merger's M-RoPE
    out = _velocity(half, torch.bfloat16)
    relative = float((out - reference).norm() / reference.norm())
    assert out.isfinite().all() and relative < 0.03
    # control: diffusers alone embeds 1000 t and the guidance after rounding them to bf16
    monkeypatch.setattr(decoder_module, "_exact_time_embedding", lambda *args: contextlib.nullcontext())
    rounded = _velocity(half, torch.bfloat16)
    assert float((rounded - reference).norm() / reference.norm()) > 3 * relative


class _Finite:
    """Forward hooks recording whether the DiT's and the VAE decoder's outputs were all finite."""

    def __init__(self, model):
        self.calls, self.handles = [], []
        for name in ("generation_decoder", "editing_decoder", "vae"):
            module = model.parts.get(name)
            target = module.decoder if name == "vae" else module.transformer
            self.handles.append(target.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def hook(module, args, output):
            tensor = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
            self.calls.append((name, bool(torch.isfinite(tensor).all())))
        return hook


def test_every_task_in_bf16_and_fp8(model_dir):
    model = NexusGen.from_pretrained(model_dir, device="cpu", dtype="bfloat16", progress=False)
    model.config.reference_image_px = (56, 56)  # 2 x 2 reference tokens instead of 18 x 18: CPU time only
    # the stored 512-token negative branch, cut to 16 tokens so that a CPU CFG step takes seconds
    model.parts.negative["prompt_embeds"] = model.parts.negative["prompt_embeds"][:, :16]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (56, 84, 3), dtype=np.uint8))
    assert isinstance(model.understand(image, "", max_new_tokens=3), str)  # describe the image
    assert isinstance(model.understand(None, "What is a cat?", max_new_tokens=3), str)  # text only
    finite = _Finite(model)
    options = dict(height=32, width=32, num_steps=1)
    outputs = [model.generate("a cat", guidance_scale=1.0, **options),
               model.generate("a cat", guidance_scale=3.0, **options),  # the official CFG: T5 negative
               model.edit(image, "make it blue", **options),
               model.edit(image, "make it blue", decoder="generation", **options)]
    assert all(o.size == (32, 32) for o in outputs)
    assert {name for name, _ in finite.calls} == {"generation_decoder", "editing_decoder", "vae"}
    # DiT passes: 1 + 2 (CFG) + 1 + 2 (an edit with the generation decoder has its CFG 3), and 4 VAE decodes
    assert all(ok for _, ok in finite.calls) and len(finite.calls) == 6 + 4
    embeds = model.predict_image_embeds("a cat")
    assert embeds.shape == (1, 81, 3584) and embeds.isfinite().all()
    del model
    gc.collect()

    fp8 = NexusGen.from_pretrained(model_dir, device="cpu", dtype="bfloat16", fp8=True, progress=False)
    assert isinstance(fp8.generate("a cat", guidance_scale=1.0, **options), Image.Image)
    dit = fp8.parts.generation_decoder.transformer
    assert fp8_linear_count(dit)[1] == 0 and isinstance(dit.transformer_blocks[0].norm1.linear, Fp8Linear)
    bf16_bytes = sum(v.numel() * 2 for v in load_file(str(
        model_dir / "generation_decoder/transformer/diffusion_pytorch_model-00001-of-00002.safetensors")).values())
    assert parameter_bytes(dit) < 0.6 * (bf16_bytes + sum(v.numel() * 2 for v in load_file(str(
        model_dir / "generation_decoder/transformer/diffusion_pytorch_model-00002-of-00002.safetensors")).values()))


def test_stock_parts_in_memory_for_training_from_stock_parents(stock, model_dir):
    """`nexusgen.loading.stock` builds in memory what assemble writes (the API training from a stock parent
    uses): the same DiT, the merger starting from the LLM's layer 0, and equal new weights for equal seeds."""
    from nexusgen.loading.stock import stock_decoder

    qwen, flux = stock
    editing = stock_decoder(flux, qwen, editing=True, dtype=torch.bfloat16)
    written = load_editing_decoder(model_dir / "editing_decoder", "cpu", torch.bfloat16)
    own, theirs = editing.state_dict(), written.state_dict()
    assert own.keys() == theirs.keys()
    for key in own:
        if key != "pooled_embeds":  # set from CLIP("") by assemble, zero here until the caller sets it
            assert torch.equal(own[key], theirs[key]), key
    generation = stock_decoder(flux / "transformer", qwen, editing=False, dtype=torch.bfloat16, fp8=True)
    assert fp8_linear_count(generation.transformer)[1] == 0 and generation.adapter[0].weight.shape == (4096, 3584)
