"""`stage.parent` accepts exactly a nexusgen folder (or run directory), an official Nexus-GenV2 folder, a stock
Qwen2.5-VL-Instruct folder or a FLUX.1-dev / FluxTransformer2DModel folder (beside `stage.ar_parent`, the AR
model); anything else, or one without the part the stage trains, is one line before step 1. A step with lr=0
exports the parent's weights: the stock ones tensor for tensor, with the new parts initialised as upstream."""

import json

import pytest
import torch
from safetensors.torch import load_file

from nexusgen.cli import main
from nexusgen.convert.export import export_official
from nexusgen.loading.autoregressive import (
    build_autoregressive,
    new_head_tensors,
    normalize_key,
    read_ar_config,
    save_autoregressive,
)
from nexusgen.loading.folder import build_random_model, save_model_folder
from nexusgen.loading.weights import read_folder_weights
from nexusgen.models.autoregressive import AR_PRESETS
from nexusgen.models.decoder import DECODER_PRESETS
from nexusgen.recipes import get_recipe
from nexusgen.train.config import apply_overrides
from nexusgen.train.stages.parent import check_parent, classify_parent

ONE_STEP = ["max_steps=1", "save_every=0", "batch_size=2", "progress=false", "lr=0"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One folder of every kind, written with the stock classes at tiny sizes."""
    from diffusers import FluxTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from nexusgen.bench.stock_folders import write_flux, write_qwen

    root = tmp_path_factory.mktemp("parents")
    save_model_folder(root / "nexusgen", build_random_model("tiny", seed=5))
    model, tokenizer, image_processor = build_autoregressive("tiny", seed=6)
    save_autoregressive(root / "ar_only/autoregressive", model, tokenizer, image_processor)
    export_official(root / "ar_only", root / "official", log=lambda line: None)
    torch.save({"adapter.0.weight": torch.zeros(1)}, root / "official_with_bin.bin")
    write_qwen(root / "qwen", blocks=2, size="tiny", seed=7)  # the published layout: 4.49 names, bf16 shards
    write_flux(root / "FLUX.1-dev", blocks=1, size="tiny", seed=8)
    Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**AR_PRESETS["tiny"]["qwen"])).save_pretrained(
        root / "qwen-5x")  # save_pretrained of transformers 5: new names, no tokenizer
    FluxTransformer2DModel(**DECODER_PRESETS["tiny"].transformer_kwargs()).save_pretrained(root / "dit")
    (root / "unrelated").mkdir()
    (root / "unrelated/notes.txt").write_text("not a model")
    return root


def test_each_kind_is_recognised_with_its_parts(folders):
    expected = {"nexusgen": ("nexusgen", {"autoregressive", "generation_decoder", "editing_decoder", "vae"}),
                "official": ("official", {"autoregressive"}), "qwen": ("stock_qwen", {"autoregressive"}),
                "qwen-5x": ("stock_qwen", {"autoregressive"}), "FLUX.1-dev": ("flux", {"transformer", "vae"}),
                "FLUX.1-dev/transformer": ("flux_transformer", {"transformer", "vae"}),
                "dit": ("flux_transformer", {"transformer"})}
    for name, (kind, parts) in expected.items():
        parent = classify_parent(folders / name)
        assert (parent.kind, set(parent.parts)) == (kind, parts), name
    assert classify_parent(folders / "official").parts["autoregressive"] == folders / "official"
    with pytest.raises(ValueError, match="is not a nexusgen model folder, an official Nexus-GenV2 folder"):
        classify_parent(folders / "unrelated")
    with pytest.raises(ValueError, match="no such folder"):
        classify_parent(folders / "missing")


@pytest.mark.parametrize("recipe,parent,ar_parent,message", [
    ("tiny-ar", "unrelated", None, "is not a nexusgen model folder"),
    ("tiny-ar", "FLUX.1-dev", None, "stage ar starts from autoregressive, but stage.parent .* has transformer, vae"),
    ("tiny-vae", "ar_only", None, "stage vae starts from vae, but stage.parent .*has autoregressive"),
    ("tiny-generation_decoder", "official_pickled", None, "generation decoder is an upstream pickle .*convert"),
    ("tiny-generation_decoder", "FLUX.1-dev", None, "FLUX.1-dev folder.*needs the AR model .*stage.ar_parent=DIR"),
    ("tiny-editing_decoder", "dit", None, "FluxTransformer2DModel folder.*needs the AR model"),
    ("tiny-generation_decoder", "qwen", None, "stock Qwen2.5-VL-Instruct folder.*no decoder to start from; start "
                                              "the DiT from FLUX.1-dev: --set stage.parent=FLUX_DIR --set stage.ar_"),
    ("tiny-generation_decoder", "FLUX.1-dev", "FLUX.1-dev/transformer", "stage.ar_parent .*FluxTransformer2DModel "
                                                                        "folder.*has no AR model"),
    ("tiny-generation_decoder", "FLUX.1-dev", "missing", "stage.ar_parent .*missing.*no such folder"),
    ("tiny-generation_decoder", "nexusgen", "qwen", "nexusgen model folder.*has its own AR model; stage.ar_parent"),
    ("tiny-generation_decoder", None, "qwen", "stage.ar_parent=.* is set but stage.parent is not"),
    ("tiny-ar", "qwen", "qwen", "stage.ar_parent is for the decoder stages .*not stage ar"),
    ("tiny-generation_decoder", "dit", "qwen", "neither stage.parent .*dit .*nor stage.ar_parent .*has a VAE"),
    ("tiny-editing_decoder", "FLUX.1-dev", "qwen", "predicts its targets with the AR model's vision head, which "
                                                   ".*stock Qwen2.5-VL-Instruct folder.*prepare-embeds"),
])
def test_a_wrong_parent_is_one_line_before_step_one(folders, tmp_path, capsys, recipe, parent, ar_parent, message):
    import re
    import shutil

    if parent == "official_pickled":  # an official folder with its pickled generation decoder beside
        shutil.copytree(folders / "official", tmp_path / parent)
        shutil.copy(folders / "official_with_bin.bin", tmp_path / parent / "generation_decoder.bin")
        path = tmp_path / parent
    else:
        path = folders / parent if parent else None
    options = [*ONE_STEP, *([f"stage.parent={path}"] if path else []),
               *([f"stage.ar_parent={folders / ar_parent}"] if ar_parent else [])]
    code = main(["train", recipe, "--out", str(tmp_path / "run"), *[a for o in options for a in ("--set", o)]])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1 and re.search(message, errors[0]), errors
    assert not (tmp_path / "run").exists()


def test_a_step_with_lr_zero_exports_the_official_parents_weights(folders, official_examples, tmp_path):
    """The official folder's tensors (4.49 names) come back in final/autoregressive (5.x names), and a
    real-size recipe takes the parent's dimensions."""
    data = official_examples / "assets/example_datasets/llm_dataset.jsonl"
    overrides = [*ONE_STEP, f"stage.parent={folders / 'official'}", f"data.paths=[\"{data}\"]",
                 "optim.grad_accum_steps=1", "dist.strategy=ddp"]
    code = main(["train", "nexus-gen-v2-ar", "--out", str(tmp_path / "run"), "--image-root", str(official_examples),
                 *[a for o in overrides for a in ("--set", o)]])
    assert code == 0
    shard = folders / "official/model-00001-of-00001.safetensors"
    official = {normalize_key(k): v for k, v in load_file(str(shard)).items()}
    exported = load_file(str(tmp_path / "run/final/autoregressive/model.safetensors"))
    assert exported.keys() == official.keys()
    assert all(torch.equal(exported[k], official[k]) for k in official)


@pytest.mark.parametrize("recipe,part", [("tiny-generation_decoder", "generation_decoder"),
                                         ("tiny-editing_decoder", "editing_decoder")])
def test_a_step_with_lr_zero_exports_the_nexusgen_parents_decoder(folders, tmp_path, recipe, part):
    assert check_parent(recipe.removeprefix("tiny-"), folders / "nexusgen").kind == "nexusgen"
    assert main(["train", recipe, "--out", str(tmp_path / "run"), "--set", f"stage.parent={folders / 'nexusgen'}",
                 *[a for o in ONE_STEP for a in ("--set", o)]]) == 0
    for name in ("transformer/diffusion_pytorch_model.safetensors",
                 "adapter.safetensors" if part == "generation_decoder" else "merger.safetensors"):
        want = load_file(str(folders / "nexusgen" / part / name))
        got = load_file(str(tmp_path / "run/final" / part / name))
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), name


# ----------------------------------------------------------------------------------------------------
# Starting from stock weights: what upstream's trainers start from, tensor for tensor
# ----------------------------------------------------------------------------------------------------
NEW_HEADS = {"vision_head.weight", "image_prefill_embeds.weight"}


def _stock_qwen(folders) -> dict:
    """The stock Qwen folder's tensors under 5.x names (bf16, as published)."""
    return {normalize_key(k): v for k, v in read_folder_weights(folders / "qwen", stem="model").items()}


def _sets(options: list[str]) -> list[str]:
    return [a for o in options for a in ("--set", o)]


def _equal_to_stock(got: dict, stock: dict) -> bool:
    """fp32 exports hold the bf16 stock values exactly."""
    return got.keys() == stock.keys() and all(torch.equal(got[k], stock[k].float()) for k in stock)


@pytest.fixture(scope="module")
def stock_ar_run(folders, official_examples, tmp_path_factory):
    """Phase 1 from the stock Qwen folder: the real-size recipe, one step at lr 0, on the official examples."""
    run = tmp_path_factory.mktemp("stock-ar") / "run"
    data = official_examples / "assets/example_datasets/llm_dataset.jsonl"
    overrides = [*ONE_STEP, f"stage.parent={folders / 'qwen'}", f"data.paths=[\"{data}\"]",
                 "optim.grad_accum_steps=1", "dist.strategy=ddp"]
    assert main(["train", "nexus-gen-v2-ar", "--out", str(run), "--image-root", str(official_examples),
                 *[a for o in overrides for a in ("--set", o)]]) == 0
    return run


def test_the_ar_stage_from_stock_qwen_keeps_its_weights_and_starts_new_heads(folders, stock_ar_run):
    exported = load_file(str(stock_ar_run / "final/autoregressive/model.safetensors"))
    assert _equal_to_stock({k: v for k, v in exported.items() if k not in NEW_HEADS}, _stock_qwen(folders))
    config = read_ar_config(stock_ar_run / "final/autoregressive")
    assert (config.hidden_size, config.num_output_tokens) == (64, 81)  # the parent's width, upstream's 81 tokens
    new = new_head_tensors(config, NEW_HEADS, seed=0)  # the training seed
    assert all(torch.equal(exported[name], new[name]) for name in NEW_HEADS)
    for name in NEW_HEADS:  # upstream's post_init: N(0, initializer_range = 0.02)
        assert 0.018 < float(exported[name].std()) < 0.022 and abs(float(exported[name].mean())) < 2e-3, name


@pytest.mark.parametrize("parent", ["FLUX.1-dev", "FLUX.1-dev/transformer"])
def test_the_generation_decoder_from_flux_and_stock_qwen(folders, tmp_path, parent):
    """DiT = FLUX's transformer, a new adapter as wide as the Qwen model, CLIP("") as pooled vector; the export
    is a complete model (the stock AR model as `nexusgen assemble` writes it, FLUX's VAE) that generates."""
    from nexusgen.api import NexusGen
    from nexusgen.loading.decoders import read_decoder_config
    from nexusgen.loading.stock import new_adapter_state
    from nexusgen.loading.text_encoders import clip_pooled

    flux, run = folders / "FLUX.1-dev", tmp_path / "run"
    options = [*ONE_STEP, f"stage.parent={folders / parent}", f"stage.ar_parent={folders / 'qwen'}"]
    assert main(["train", "tiny-generation_decoder", "--out", str(run), *_sets(options)]) == 0
    final = run / "final"
    got = load_file(str(final / "generation_decoder/transformer/diffusion_pytorch_model.safetensors"))
    assert _equal_to_stock(got, read_folder_weights(flux / "transformer"))
    config = read_decoder_config(final / "generation_decoder")
    assert (config.embed_dim, config.context_dim, config.merger) == (64, 64, None)
    adapter = load_file(str(final / "generation_decoder/adapter.safetensors"))
    assert _equal_to_stock(adapter, new_adapter_state(config, seed=0))
    pooled = load_file(str(final / "generation_decoder/pooled.safetensors"))["pooled_embeds"]
    assert torch.equal(pooled, clip_pooled(flux / "text_encoder", flux / "tokenizer", "")) and pooled.abs().sum() > 0
    assert _equal_to_stock(load_file(str(final / "vae/diffusion_pytorch_model.safetensors")),
                           read_folder_weights(flux / "vae"))
    ar = {normalize_key(k): v for k, v in read_folder_weights(final / "autoregressive", stem="model").items()}
    assert _equal_to_stock({k: v for k, v in ar.items() if k not in NEW_HEADS}, _stock_qwen(folders))
    model = NexusGen.from_pretrained(final, device="cpu", progress=False)
    assert model.generate("a red circle", num_steps=2, guidance_scale=1.0, seed=1).size == (144, 144)


def test_the_editing_decoder_from_flux_and_the_ar_stage(folders, stock_ar_run, tmp_path):
    """The merger's layer is the AR model's LLM layer 0 (here, after phase 1 at lr 0: the stock Qwen's), its
    projector new; the DiT is FLUX's; the AR model of the export is the ar stage's."""
    from nexusgen.loading.decoders import read_decoder_config
    from nexusgen.loading.stock import new_merger_state

    run = tmp_path / "run"
    options = [*ONE_STEP, f"stage.parent={folders / 'FLUX.1-dev'}", f"stage.ar_parent={stock_ar_run}"]
    assert main(["train", "tiny-editing_decoder", "--out", str(run), *_sets(options)]) == 0
    final = run / "final"
    merger = load_file(str(final / "editing_decoder/merger.safetensors"))
    layer0 = {f"layers.0.{k.removeprefix('model.language_model.layers.0.')}": v for k, v in _stock_qwen(folders).items()
              if k.startswith("model.language_model.layers.0.")}
    assert _equal_to_stock({k: v for k, v in merger.items() if k.startswith("layers.")}, layer0)
    config = read_decoder_config(final / "editing_decoder")
    fresh = new_merger_state(config.merger, folders / "qwen", seed=0)
    assert all(torch.equal(merger[k], fresh[k]) for k in fresh if k.startswith("projector."))
    assert (config.merger.num_attention_heads, config.merger.num_key_value_heads, config.merger.intermediate_size) == (
        4, 2, 128)  # the Qwen layer's shape
    got = load_file(str(final / "editing_decoder/transformer/diffusion_pytorch_model.safetensors"))
    assert _equal_to_stock(got, read_folder_weights(folders / "FLUX.1-dev/transformer"))
    exported_ar = load_file(str(final / "autoregressive/model.safetensors"))
    phase1 = load_file(str(stock_ar_run / "final/autoregressive/model.safetensors"))
    assert exported_ar.keys() == phase1.keys() and all(torch.equal(exported_ar[k], phase1[k]) for k in phase1)


def test_a_multi_stage_recipe_gives_a_flux_decoder_stage_the_previous_export_as_ar_parent(folders, tmp_path):
    from nexusgen.train.multistage import run_stages

    stages = {"ar": lambda: get_recipe("tiny-ar"), "generation_decoder": lambda: get_recipe("tiny-generation_decoder")}
    overrides = [*ONE_STEP, f"ar.stage.parent={folders / 'qwen'}", f"gen_decoder.stage.parent={folders / 'FLUX.1-dev'}"]
    run_stages(stages, tmp_path / "v2", overrides)
    recorded = json.loads((tmp_path / "v2/generation_decoder/config.json").read_text())
    assert recorded["stage"]["ar_parent"] == str(tmp_path / "v2/ar")
    final = tmp_path / "v2/final"
    assert {p.name for p in final.iterdir() if p.is_dir()} == {"autoregressive", "generation_decoder", "vae"}
    ar = load_file(str(final / "autoregressive/model.safetensors"))
    phase1 = load_file(str(tmp_path / "v2/ar/final/autoregressive/model.safetensors"))
    assert ar.keys() == phase1.keys() and all(torch.equal(ar[k], phase1[k]) for k in phase1)


@pytest.mark.parametrize("recipe", ["tiny-generation_decoder", "tiny-editing_decoder"])
def test_the_dry_run_counts_the_stock_stage(folders, stock_ar_run, capsys, recipe):
    from nexusgen.train.parallel import DistInfo
    from nexusgen.train.stages import build_stage

    options = [f"stage.parent={folders / 'FLUX.1-dev'}", f"stage.ar_parent={stock_ar_run}"]
    assert main(["train", recipe, "--out", "unused", "--dry-run", *_sets(options)]) == 0
    (plan,) = json.loads(capsys.readouterr().out)["stages"].values()
    config = apply_overrides(get_recipe(recipe), options)
    module = build_stage(config, DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))).module
    vae, encoder = module.helpers
    assert plan["parameters"] == sum(p.numel() for p in module.parameters())
    assert plan["frozen_helper_parameters"] == sum(p.numel() for m in (vae, encoder) for p in m.parameters())


def test_a_reference_size_off_the_parents_token_grid_is_one_line(folders, tmp_path, capsys):
    """The real recipe's 504-px reference fits 28-px tokens; a parent with 16-px tokens needs another size."""
    options = [*ONE_STEP, f"stage.parent={folders / 'FLUX.1-dev'}", f"stage.ar_parent={folders / 'nexusgen'}",
               "data.reference_image_px=504"]
    assert main(["train", "tiny-editing_decoder", "--out", str(tmp_path / "run"), *_sets(options)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == ["nexusgen train: error: data.reference_image_px=504 is not a multiple of the AR model's 16-px "
                      "image tokens: set a multiple of 16 (or 0: the bounded input size)"]
    assert not (tmp_path / "run").exists()
