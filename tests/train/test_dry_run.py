"""`nexusgen train RECIPE --dry-run`: stages built on the meta device; parameter counts equal the real
stage's, memory adds up as docs/training.md states, and the real-size AR stage is planned in seconds."""

import json

import pytest
import torch

from nexusgen.cli import main
from nexusgen.recipes import get_recipe
from nexusgen.train.config import apply_overrides
from nexusgen.train.lora import apply_lora
from nexusgen.train.parallel import DistInfo
from nexusgen.train.stages import build_stage

SINGLE = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def _dry_run(capsys, *args) -> dict:
    assert main(["train", *args, "--out", "unused", "--dry-run"]) == 0
    return json.loads(capsys.readouterr().out)


def _plan(stage: dict, **wanted) -> dict:
    return next(p for p in stage["plans"] if all(p[k] == v for k, v in wanted.items()))


@pytest.mark.parametrize("recipe", ["tiny-ar", "tiny-generation_decoder", "tiny-editing_decoder", "tiny-vae"])
def test_counts_equal_the_real_stage(capsys, recipe):
    (stage,) = _dry_run(capsys, recipe, "--ranks", "2", "--set", "lora.rank=4")["stages"].values()
    config = apply_overrides(get_recipe(recipe), [])
    module = build_stage(config, SINGLE).module
    assert stage["parameters"] == sum(p.numel() for p in module.parameters())
    assert stage["trainable_parameters"] == sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert stage["optimizer_state_gb"] == round(8 * stage["trainable_parameters"] / 1e9, 2)
    if recipe != "tiny-vae":  # LoRA adapts linear layers of the trainable parts, counted as apply_lora does
        apply_lora(module, apply_overrides(config, ["lora.rank=4"]).lora)
        assert stage["lora"]["trainable_parameters"] == sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_memory_adds_up(capsys):
    plan = _dry_run(capsys, "tiny-ar", "--ranks", "2", "--seq-len", "1000", "--set", "batch_size=8")["stages"]["ar"]
    ddp = _plan(plan, strategy="ddp", ranks=2, gradient_checkpointing=False, lora=False)["memory_gb"]
    fsdp = _plan(plan, strategy="fsdp", ranks=2, gradient_checkpointing=False, lora=False)["memory_gb"]
    checkpointed = _plan(plan, strategy="fsdp", ranks=2, gradient_checkpointing=True, lora=False)["memory_gb"]
    assert fsdp["optimizer"] == pytest.approx(ddp["optimizer"] / 2, abs=1e-4)
    assert ddp["gradients"] == pytest.approx(4 * plan["trainable_parameters"] / 1e9, abs=1e-4)
    assert checkpointed["activations"] < fsdp["activations"]
    # activations: 2 layers x 1000 tokens x micro-batch 4 x (8 h + 2 h_kv + 4 i) x 2 bytes, tiny h=64, h_kv=32, i=128
    assert ddp["activations"] == round(2 * 1000 * 4 * (8 * 64 + 2 * 32 + 4 * 128) * 2 / 1e9, 4)
    # logits: 1000 tokens x micro-batch 4 x vocabulary 272 x (2 + 4 + 4) bytes
    assert ddp["logits"] == round(1000 * 4 * 272 * 10 / 1e9, 4)
    assert ddp["peak"] == pytest.approx(sum(v for k, v in ddp.items() if k != "peak"), abs=1e-3)


def test_the_real_size_ar_stage_is_planned_on_meta_and_a_parent_sets_its_size(capsys, tmp_path):
    from nexusgen.loading.autoregressive import build_autoregressive, save_autoregressive

    plan = _dry_run(capsys, "nexus-gen-v2-ar")["stages"]["ar"]
    assert 8.2e9 < plan["parameters"] < 8.4e9  # Qwen2.5-VL-7B + vision head + prefill table
    configured = plan["configured"]
    assert (configured["strategy"], configured["ranks"], configured["gradient_checkpointing"]) == ("fsdp", 8, True)
    assert configured["fits_80gb"]
    assert not _plan(plan, strategy="ddp", ranks=8, gradient_checkpointing=True, lora=False)["fits_80gb"]
    model, tokenizer, image_processor = build_autoregressive("tiny", seed=0)
    save_autoregressive(tmp_path / "tiny/autoregressive", model, tokenizer, image_processor)
    small = _dry_run(capsys, "nexus-gen-v2-ar", "--set", f"stage.parent={tmp_path / 'tiny'}")["stages"]["ar"]
    assert small["parameters"] == sum(p.numel() for p in model.parameters())
