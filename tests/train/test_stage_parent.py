"""`stage.parent` accepts exactly a nexusgen folder (or run directory), an official Nexus-GenV2 folder, a stock
Qwen2.5-VL-Instruct folder or a FLUX.1-dev / FluxTransformer2DModel folder; anything else, or one without
the part the stage trains, is one line before step 1. A step with lr=0 exports the parent's weights."""

import json

import pytest
import torch
from safetensors.torch import load_file

from nexusgen.cli import main
from nexusgen.convert.export import export_official
from nexusgen.loading.autoregressive import build_autoregressive, normalize_key, save_autoregressive
from nexusgen.loading.folder import build_random_model, save_model_folder
from nexusgen.models.autoregressive import AR_PRESETS
from nexusgen.models.decoder import DECODER_PRESETS
from nexusgen.models.vae import VAE_PRESETS, build_vae
from nexusgen.train.stages.parent import check_parent, classify_parent

ONE_STEP = ["max_steps=1", "save_every=0", "batch_size=2", "progress=false", "lr=0"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One folder of every kind, written with the stock classes at tiny sizes."""
    from diffusers import FluxTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    root = tmp_path_factory.mktemp("parents")
    save_model_folder(root / "nexusgen", build_random_model("tiny", seed=5))
    model, tokenizer, image_processor = build_autoregressive("tiny", seed=6)
    save_autoregressive(root / "ar_only/autoregressive", model, tokenizer, image_processor)
    export_official(root / "ar_only", root / "official", log=lambda line: None)
    torch.save({"adapter.0.weight": torch.zeros(1)}, root / "official_with_bin.bin")
    Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**AR_PRESETS["tiny"]["qwen"])).save_pretrained(root / "qwen")
    flux = root / "FLUX.1-dev"
    FluxTransformer2DModel(**DECODER_PRESETS["tiny"].transformer_kwargs()).save_pretrained(flux / "transformer")
    build_vae(VAE_PRESETS["tiny"]).save_pretrained(flux / "vae")
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline",
                                                       "transformer": ["diffusers", "FluxTransformer2DModel"],
                                                       "vae": ["diffusers", "AutoencoderKL"]}))
    (root / "unrelated").mkdir()
    (root / "unrelated/notes.txt").write_text("not a model")
    return root


def test_each_kind_is_recognised_with_its_parts(folders):
    expected = {"nexusgen": ("nexusgen", {"autoregressive", "generation_decoder", "editing_decoder", "vae"}),
                "official": ("official", {"autoregressive"}), "qwen": ("stock_qwen", {"autoregressive"}),
                "FLUX.1-dev": ("flux", {"transformer", "vae"}),
                "FLUX.1-dev/transformer": ("flux_transformer", {"transformer", "vae"})}
    for name, (kind, parts) in expected.items():
        parent = classify_parent(folders / name)
        assert (parent.kind, set(parent.parts)) == (kind, parts), name
    assert classify_parent(folders / "official").parts["autoregressive"] == folders / "official"
    with pytest.raises(ValueError, match="is not a nexusgen model folder, an official Nexus-GenV2 folder"):
        classify_parent(folders / "unrelated")
    with pytest.raises(ValueError, match="no such folder"):
        classify_parent(folders / "missing")


@pytest.mark.parametrize("recipe,parent,message", [
    ("tiny-ar", "unrelated", "is not a nexusgen model folder"),
    ("tiny-ar", "FLUX.1-dev", "stage ar starts from autoregressive, but stage.parent .* has transformer, vae"),
    ("tiny-vae", "ar_only", "stage vae starts from vae, but stage.parent .*has autoregressive"),
    ("tiny-generation_decoder", "official_pickled", "generation decoder is an upstream pickle .*nexusgen convert"),
    ("tiny-ar", "qwen", "stock Qwen2.5-VL-Instruct folder.*not available yet"),
    ("tiny-generation_decoder", "FLUX.1-dev", "FLUX.1-dev folder.*starting a transformer from stock weights"),
])
def test_a_wrong_parent_is_one_line_before_step_one(folders, tmp_path, capsys, recipe, parent, message):
    import re
    import shutil

    if parent == "official_pickled":  # an official folder with its pickled generation decoder beside
        shutil.copytree(folders / "official", tmp_path / parent)
        shutil.copy(folders / "official_with_bin.bin", tmp_path / parent / "generation_decoder.bin")
        path = tmp_path / parent
    else:
        path = folders / parent
    code = main(["train", recipe, "--out", str(tmp_path / "run"), "--set", f"stage.parent={path}",
                 *[a for o in ONE_STEP for a in ("--set", o)]])
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
