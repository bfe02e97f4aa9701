"""Every stage's tiny recipe trains on generated data; a fixed batch is over-fitted; EMA and LoRA."""

import json
import math

import pytest
import torch

from nexusgen.recipes import RECIPES, get_recipe
from nexusgen.train.config import LoraConfig, apply_overrides
from nexusgen.train.ema import EMA
from nexusgen.train.loop import train
from nexusgen.train.metrics import read_metrics


@pytest.mark.parametrize("recipe", sorted(r for r in RECIPES if r.startswith("tiny-")))
def test_tiny_recipe_runs_and_writes_the_run_dir(recipe, tmp_path):
    stage = recipe.removeprefix("tiny-")
    config = apply_overrides(get_recipe(recipe), ["max_steps=3", "save_every=2", "progress=false",
                                                  "eval_every=2"])
    summary = train(config, tmp_path)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in records)
    assert "eval/loss" in records[1] and "eval/loss" not in records[0]  # the periodic evaluation hook
    assert records[-1]["samples_per_s"] > 0 and records[-1]["lr"] > 0
    assert summary["final_loss"] == records[-1]["loss"]
    assert json.loads((tmp_path / "config.json").read_text())["stage"]["name"] == stage
    assert (tmp_path / "git_sha").read_text().strip()
    assert (tmp_path / "checkpoints/step_000002/COMPLETE").is_file()
    assert any((tmp_path / "final").iterdir())


def test_vae_overfits_a_fixed_batch(tmp_path):
    """4 images, batch 4, MSE only: the loss must fall by 10x within 100 steps."""
    config = apply_overrides(get_recipe("tiny-vae"), [
        "max_steps=100", "save_every=0", "data.num_samples=4", "batch_size=4", "lr=3e-3",
        "stage.loss_weights.l1=0", "stage.loss_weights.mse=1", "stage.loss_weights.kl=0",
        "checkpoint.export_final=false", "progress=false"])
    train(config, tmp_path)
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_ema_matches_the_closed_form():
    """Constant weights w after k updates from w0: shadow = w + decay^k (w0 - w)."""
    layer = torch.nn.Linear(3, 2)
    ema = EMA(layer, decay=0.9)
    start = {n: t.clone() for n, t in ema.shadow.items()}
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.fill_(-1.0)
    for _ in range(5):
        ema.update()
    for name, param in layer.named_parameters():
        expected = param.detach() + 0.9 ** 5 * (start[name] - param.detach())
        torch.testing.assert_close(ema.shadow[name], expected)
    ema.copy_to(layer)
    torch.testing.assert_close(layer.weight, start["weight"] * 0.9 ** 5 + (1 - 0.9 ** 5))


def test_ema_warmup_ramps_the_decay_and_forgets_the_start():
    """With warm-up, update n decays by min(decay, (1 + n) / (10 + n)): shadow = w + prod(d_n) (w0 - w)."""
    layer = torch.nn.Linear(3, 2)
    ema = EMA(layer, decay=0.9, warmup=True)
    assert [ema.decay_at(n) for n in (1, 8, 80, 10_000)] == [2 / 11, 9 / 18, 0.9, 0.9]
    start = {n: t.clone() for n, t in ema.shadow.items()}
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.fill_(-1.0)
    for n in range(1, 6):
        ema.update(n)
    remaining = math.prod((1 + n) / (10 + n) for n in range(1, 6))  # 0.0238 of w0, vs 0.9^5 = 0.59
    for name, param in layer.named_parameters():
        torch.testing.assert_close(ema.shadow[name], param.detach() + remaining * (start[name] - param.detach()))
    constant = EMA(layer, decay=0.9)
    assert constant.decay_at(1) == constant.decay_at(10_000) == 0.9


def test_lora_trains_only_adapters_and_merges_exactly():
    from nexusgen.train.lora import apply_lora, merge_lora

    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("q_proj", torch.nn.Linear(8, 8))
    model.add_module("head", torch.nn.Linear(8, 2))
    model.add_module("frozen", torch.nn.Linear(2, 2))
    model.frozen.requires_grad_(False)
    base = model.q_proj.weight.detach().clone()
    targets = apply_lora(model, LoraConfig(rank=2, alpha=4.0, target_modules=["q_proj", "frozen"]))
    assert targets == ["q_proj"]  # frozen layers are never adapted
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"q_proj.lora_A.default.weight", "q_proj.lora_B.default.weight",
                         "head.weight", "head.bias"}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(16, 8)
    for _ in range(3):
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    before = model(x)
    assert torch.equal(model.q_proj.base_layer.weight, base)
    assert merge_lora(model) == 1
    assert type(model.q_proj) is torch.nn.Linear and not torch.equal(model.q_proj.weight, base)
    torch.testing.assert_close(model(x), before, atol=1e-6, rtol=1e-5)


def _embeds_jsonl(root, kind: str):
    """A tiny decoder-embedding dataset: synthetic records + random (N, D) embedding files."""
    from nexusgen.data.embeds import save_embeds
    from nexusgen.data.synthetic import SyntheticSource, write_jsonl

    path = write_jsonl(SyntheticSource(8, 0, image_size=32, tasks=["generate" if kind == "gen" else "edit"]),
                       root / "data.jsonl")
    g = torch.Generator().manual_seed(0)
    records = []
    keys = {"embed_path": 4} if kind == "gen" else {"embed_source": 16, "embed_target": 4}  # 2x2, 4x4 grids
    for i, line in enumerate(path.read_text().splitlines()):
        record = json.loads(line)
        for key, tokens in keys.items():
            save_embeds(root / f"{key}_{i}.safetensors", torch.randn(tokens, 64, generator=g))
            record[key] = f"{key}_{i}.safetensors"
        records.append(json.dumps(record))
    path.write_text("\n".join(records) + "\n")
    return path


@pytest.mark.parametrize("kind, stage", [("gen", "generation_decoder"), ("edit", "editing_decoder")])
def test_decoder_stage_trains_from_an_embedding_dataset(kind, stage, tmp_path):
    path = _embeds_jsonl(tmp_path, kind)
    config = apply_overrides(get_recipe(f"tiny-{stage}"), [
        "max_steps=4", "save_every=2", "data.source=embeds", f'data.paths=["{path}"]', "progress=false"])
    train(config, tmp_path / "run")
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    assert len(records) == 4 and all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in records)
    assert (tmp_path / "run/checkpoints/step_000004/COMPLETE").is_file()


def test_stage_chain_exports_a_complete_folder(tmp_path):
    """vae -> generation_decoder(parent=vae run): the VAE is used and copied untouched, the rest is added."""
    from safetensors.torch import load_file

    vae_run, dec_run = tmp_path / "vae", tmp_path / "dec"
    train(apply_overrides(get_recipe("tiny-vae"), ["max_steps=2", "save_every=0", "progress=false"]), vae_run)
    config = apply_overrides(get_recipe("tiny-generation_decoder"), [
        "max_steps=2", "save_every=0", "progress=false", f"stage.parent={vae_run}"])
    train(config, dec_run)
    assert {p.name for p in (dec_run / "final").iterdir()} >= {"vae", "generation_decoder", "autoregressive"}
    name = "diffusion_pytorch_model.safetensors"
    a, b = load_file(str(vae_run / "final/vae" / name)), load_file(str(dec_run / "final/vae" / name))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_run_exports_merged_weights_that_load(tmp_path):
    from nexusgen.loading.autoregressive import build_autoregressive, load_autoregressive
    from nexusgen.train.parallel import seed_everything

    config = apply_overrides(get_recipe("tiny-ar"), ["max_steps=3", "save_every=0", "progress=false",
                                                      "lora.rank=4", "lr=1e-2"])
    train(config, tmp_path)
    model, _, _ = load_autoregressive(tmp_path / "final/autoregressive", device="cpu")
    assert not any("lora" in k for k in model.state_dict())
    seed_everything(config.seed, 0)  # the loop builds the model right after this seeding
    fresh, _, _ = build_autoregressive("tiny")
    state, start = model.state_dict(), fresh.state_dict()
    q = "vlm.model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(state[q], start[q])                      # the merged LoRA delta
    assert torch.linalg.matrix_rank(state[q] - start[q]) <= 4       # ... is low-rank
    visual = [k for k in state if k.startswith("vlm.model.visual.")]
    assert visual and all(torch.equal(state[k], start[k]) for k in visual)  # the ViT stayed frozen


def _tiny_ar(out, *overrides: str, steps: int = 1) -> None:
    """A short tiny-ar run into `out`, with more overrides."""
    train(apply_overrides(get_recipe("tiny-ar"), [f"max_steps={steps}", "save_every=0", "progress=false",
                                                  *overrides]), out)


def test_ar_stage_sets_a_parents_image_feed(tmp_path):
    """stage.model.image_feed on a loaded parent (the standard-AR ablation from a trained model): the export
    carries it; a setting that would reshape the parent's weights is no stage.model field at all."""
    from nexusgen.loading.autoregressive import load_autoregressive

    parent, child = tmp_path / "parent", tmp_path / "child"
    _tiny_ar(parent)
    _tiny_ar(child, f"stage.parent={parent}", "stage.model.image_feed=predicted")
    assert load_autoregressive(child / "final/autoregressive", device="cpu")[0].config.image_feed == "predicted"
    with pytest.raises(ValueError, match="no field 'num_output_tokens'"):
        _tiny_ar(tmp_path / "bad", f"stage.parent={parent}", "stage.model.num_output_tokens=4")


@pytest.mark.parametrize("option, value", [("rope_theta", 100), ("input_image_positions", True),
                                           ("add_layers", 4), ("question_first", True)])
def test_removed_model_options_are_refused_only_when_turned_on(option, value):
    """The research options that did not help (M-RoPE re-based, input image places, identity layers added,
    the question first) are gone: stored at their off value they load, turned on they are one line each."""
    import json

    from nexusgen.train.config import config_from_dict, config_to_dict

    with pytest.raises(ValueError, match=f"stage.model.{option} .*was removed"):
        apply_overrides(get_recipe("tiny-ar"), [f"stage.model={json.dumps({option: value})}"])
    with pytest.raises(ValueError, match=f"stage.model.{option} .*was removed"):
        apply_overrides(get_recipe("tiny-ar"), [f"stage.model.{option}={json.dumps(value)}"])
    stored = config_to_dict(get_recipe("tiny-ar"))
    stored["stage"]["model"] = {option: False if value is True else None}
    assert config_from_dict(type(get_recipe("tiny-ar")), stored) == get_recipe("tiny-ar")


def test_shapesworld_question_first_is_refused(tmp_path):
    """The question before the image (`world_options.question_first`) did not help and was removed: off it
    is ignored, on it stops the run before anything is written."""
    with pytest.raises(ValueError, match="question_first .*was removed"):
        _tiny_ar(tmp_path / "run", "data.world=shapes", 'data.world_options={"question_first": true}')
    assert not (tmp_path / "run").exists()
    _tiny_ar(tmp_path / "off", "data.world=shapes", 'data.world_options={"question_first": false}')
