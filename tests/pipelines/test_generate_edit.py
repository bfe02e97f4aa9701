"""Generation and editing pipelines at the tiny preset: shapes, seeds, batch == single, languages,
reference grids, the decoder choice, CFG branches and input errors."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from nexusgen.flow.sampler import edit_latents, generate_latents
from nexusgen.models.vae import latents_to_images
from nexusgen.pipelines import EditPipeline, GeneratePipeline
from nexusgen.pipelines.generate import image_settings
from nexusgen.pipelines.inputs import detect_language, image_request_inputs
from nexusgen.pipelines.predict import reference_embeds
from nexusgen.processing.images import resize_fixed


def _pixels(image):
    return np.asarray(image, dtype=np.int16)


def _unit(image):
    """PIL -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255


def test_generate_shapes_seeds_and_sizes(tiny):
    out = tiny._generate(prompt=["a red circle", "a blue square"], seed=7)
    assert [im.size for im in out.images] == [(64, 64), (64, 64)]
    assert out.image_embeds.shape == (2, 16, 64) and out.image_embeds.dtype == torch.float32
    assert out.seeds == [7, 8]
    sized = tiny._generate(prompt="a red circle", height=48, width=80, num_steps=2)
    assert sized.images[0].size == (80, 48)  # (width, height)
    with pytest.raises(ValueError, match=r"height must be a multiple of 16 .*\(e.g. 32 or 48\), got 40"):
        tiny._generate(prompt="a red circle", height=40, width=72, num_steps=2)  # refused, never rounded


def test_generate_is_deterministic_under_a_seed(tiny):
    a = tiny.generate("a red circle", seed=3)
    b = tiny.generate("a red circle", seed=3)
    c = tiny.generate("a red circle", seed=4)
    assert np.array_equal(_pixels(a), _pixels(b))
    assert np.abs(_pixels(a) - _pixels(c)).max() > 0


def test_generate_batch_equals_single(tiny):
    prompts = ["a red circle", "two green triangles", "一个蓝色的正方形"]
    batch = tiny._generate(prompt=prompts, seed=10)
    for b, prompt in enumerate(prompts):
        single = tiny._generate(prompt=prompt, seed=10 + b)  # sample b of a batch uses seed + b
        torch.testing.assert_close(batch.image_embeds[b], single.image_embeds[0], atol=1e-5, rtol=1e-5)
        assert np.abs(_pixels(batch.images[b]) - _pixels(single.images[0])).max() <= 1


def test_a_list_of_seeds_gives_each_prompt_its_own_seed(tiny, pictures):
    # a server batches unrelated requests: each keeps its own seed, whatever its place in the batch
    # (alone vs in a batch differs only by float rounding in the random tiny model: <= 1 level of 255)
    def same(a, b):
        return np.abs(_pixels(a) - _pixels(b)).max() <= 1

    prompts = ["two green triangles", "a red circle"]
    batch = tiny.generate(prompts, seed=[7, 123])
    for prompt, seed, image in zip(prompts, [7, 123], batch, strict=True):
        assert same(image, tiny.generate(prompt, seed=seed))
    assert not same(batch[1], tiny.generate("a red circle", seed=8))  # the seed, not the position, counts
    square, wide = pictures
    edits = tiny.edit([square, wide], ["make it blue", "remove the star"], seed=[40, 2])
    assert same(edits[0], tiny.edit(square, "make it blue", seed=40))
    assert same(edits[1], tiny.edit(wide, "remove the star", seed=2))
    decoded = tiny.decode(tiny.predict_image_embeds(prompts), seed=[7, 123])
    assert all(np.array_equal(_pixels(a), _pixels(b)) for a, b in zip(decoded, batch, strict=True))


def test_generate_equals_the_sampler_on_the_predicted_embeddings(tiny):
    out = tiny._generate(prompt="a red circle", seed=5)
    parts = tiny.parts
    embeds = tiny.predict_image_embeds("a red circle")
    torch.testing.assert_close(embeds, out.image_embeds, atol=0, rtol=0)
    expected = latents_to_images(parts.vae, generate_latents(parts.generation_decoder, embeds, (8, 8), num_steps=4,
                                                             seed=5))
    got = _unit(out.images[0])
    assert (got - expected[0]).abs().max() <= 0.5 / 255 + 1e-6  # only the 8-bit rounding


def test_language_detection_selects_the_chinese_template(tiny):
    assert detect_language("a red circle") == "en"
    assert detect_language("红色的圆") == "zh" and detect_language("make it 蓝色") == "zh"
    batch = image_request_inputs(tiny.processor, ["a red circle", "红色的圆"], "generate")
    texts = [tiny.processor.tokenizer.decode(row[mask.bool()]) for row, mask in
             zip(batch["input_ids"], batch["attention_mask"], strict=True)]
    assert texts[0].endswith("Here is an image based on the description: <|vision_start|>")
    assert "Generate an image according to the following description: a red circle" in texts[0]
    assert texts[1].endswith("这是根据您的描述生成的图像：<|vision_start|>")
    assert "根据以下描述生成一张图像：红色的圆" in texts[1]


def test_per_image_seed_lists(tiny, pictures):
    """A list of seeds gives image b the noise seed[b]: the same images as the int form with those seeds,
    and one seed shared by a batch (what the benchmark exports use: an item's noise is its own)."""
    prompts = ["a red circle", "two green triangles"]
    as_int = tiny._generate(prompt=prompts, seed=5)
    as_list = tiny._generate(prompt=prompts, seed=[5, 6])
    assert as_list.seeds == [5, 6]
    assert all(np.array_equal(_pixels(a), _pixels(b)) for a, b in zip(as_int.images, as_list.images))
    shared = tiny._generate(prompt=prompts, seed=[9, 9])
    assert shared.seeds == [9, 9]
    alone = tiny._generate(prompt=prompts[1], seed=9)
    assert np.abs(_pixels(shared.images[1]) - _pixels(alone.images[0])).max() <= 1
    square, wide = pictures
    edited = tiny._edit(image=[square, wide], prompt=["make it blue", "remove the star"], seed=[3, 3])
    assert edited.seeds == [3, 3]
    with pytest.raises(ValueError, match="got 1 seeds for 2 images"):
        tiny._generate(prompt=prompts, seed=[5])
    with pytest.raises(ValueError, match=r"seed\[1\] must be an integer between 0 and 2\*\*64 - 1"):
        tiny._generate(prompt=prompts, seed=[5, -1])
    with pytest.raises(ValueError, match="2 seeds for 1 conversations"):  # chat: one per conversation
        tiny.chat([{"role": "user", "content": "Draw a red circle"}], seed=[1, 2])


def test_edit_batch_equals_single_with_mixed_reference_grids(tiny, pictures):
    square, wide = pictures
    batch = tiny._edit(image=[square, wide], prompt=["make it blue", "remove the star"], seed=1)
    assert [im.size for im in batch.images] == [(64, 64), (64, 64)]  # the model's size, any input aspect
    for b, (image, prompt) in enumerate([(square, "make it blue"), (wide, "remove the star")]):
        single = tiny._edit(image=image, prompt=prompt, seed=1 + b)
        torch.testing.assert_close(batch.image_embeds[b], single.image_embeds[0], atol=1e-5, rtol=1e-5)
        assert np.abs(_pixels(batch.images[b]) - _pixels(single.images[0])).max() <= 1


def test_editing_decoder_gets_the_source_encoding_at_the_reference_grid(tiny, pictures):
    square, wide = pictures
    parts, processor = tiny.parts, tiny.processor
    refs = reference_embeds(parts.ar_model, processor, tiny.config, tiny.runtime, [square, wide])
    assert [grid for _, grid in refs] == [(4, 4), (4, 6)]  # bounded input size (reference_image_px None)
    fixed = dataclasses.replace(tiny.config, reference_image_px=(128, 128))
    (embeds, grid), = reference_embeds(parts.ar_model, processor, fixed, tiny.runtime, [wide])
    pixels = processor.image_processor(images=[resize_fixed(wide, (128, 128))], do_resize=False,
                                       return_tensors="pt")
    expected = parts.ar_model.encode_images(pixels["pixel_values"], pixels["image_grid_thw"])[0]
    assert grid == (8, 8) and embeds.shape == (64, 64)
    torch.testing.assert_close(embeds, expected)
    # the pipeline's output is edit_latents on (predicted target, that reference), decoded
    out = tiny._edit(image=square, prompt="make it blue", seed=2)
    target = tiny.predict_image_embeds("make it blue", square)
    expected_image = latents_to_images(parts.vae, edit_latents(parts.editing_decoder, target, refs[0][0][None],
                                                               (4, 4), (4, 4), (8, 8), num_steps=4, seed=2))
    got = _unit(out.images[0])
    assert (got - expected_image[0]).abs().max() <= 0.5 / 255 + 1e-6


def test_edit_with_the_generation_decoder_ignores_the_reference(tiny, pictures):
    square, _ = pictures
    out = tiny._edit(image=square, prompt="make it blue", decoder="generation", seed=4)
    embeds = tiny.predict_image_embeds("make it blue", square)
    parts = tiny.parts
    expected = latents_to_images(parts.vae, generate_latents(parts.generation_decoder, embeds, (8, 8), num_steps=4,
                                                             seed=4))
    got = _unit(out.images[0])
    assert out.decoder == "generation" and (got - expected[0]).abs().max() <= 0.5 / 255 + 1e-6
    editing = tiny._edit(image=square, prompt="make it blue", seed=4)
    assert np.abs(_pixels(editing.images[0]) - _pixels(out.images[0])).max() > 0


def _pipelines_with(tiny, **sampling):
    config = copy.deepcopy(tiny.config)
    config.sampling = dataclasses.replace(config.sampling, **sampling)
    p = tiny.parts
    gen = GeneratePipeline(p.ar_model, tiny.processor, p.generation_decoder, p.vae, config, tiny.runtime)
    edit = EditPipeline(p.ar_model, tiny.processor, p.editing_decoder, p.vae, config, tiny.runtime, gen)
    return gen, edit


def test_guidance_needs_a_negative_branch(tiny, pictures):
    with pytest.raises(ValueError, match="no negative branch"):
        tiny.generate("a red circle", guidance_scale=2.0)  # tiny: negative "none"
    gen, edit = _pipelines_with(tiny, negative="null")
    plain = gen(prompt="a red circle", seed=0)
    guided = gen(prompt="a red circle", seed=0, guidance_scale=3.0)
    assert np.abs(_pixels(plain.images[0]) - _pixels(guided.images[0])).max() > 0
    torch.testing.assert_close(gen(prompt="a red circle", seed=0, guidance_scale=1.0).image_embeds,
                               plain.image_embeds)
    assert edit(image=pictures[0], prompt="make it blue", guidance_scale=2.0).images[0].size == (64, 64)
    t5, _ = _pipelines_with(tiny, negative="t5")
    with pytest.raises(ValueError, match="T5"):
        t5(prompt="a red circle", guidance_scale=2.0)


@pytest.mark.parametrize("call, message", [
    (lambda m, im: m._generate(prompt=""), "empty"),
    (lambda m, im: m._generate(prompt=["ok", 3]), "prompt 1 must be a string"),
    (lambda m, im: m._generate(prompt=[]), "empty list"),
    (lambda m, im: m._generate(prompt="x", num_steps=0), "num_steps"),
    (lambda m, im: m._generate(prompt="x", seed=-1), "seed"),
    (lambda m, im: m._generate(prompt="x", seed=[]), "got 0 seeds for 1 images"),
    (lambda m, im: m._edit(image=[im, im], prompt=["x", "y"], seed=[1, 2, 3]), "got 3 seeds for 2 images"),
    (lambda m, im: m._generate(prompt="x", height=-8), "height"),
    (lambda m, im: m._edit(image=[im, im], prompt=["x"]), "2 images but 1 prompts"),
    (lambda m, im: m._edit(image="not an image", prompt="x"), "image must be"),
    (lambda m, im: m._edit(image=im, prompt="x", decoder="magic"), "decoder must be"),
])
def test_bad_inputs_raise_value_errors(tiny, pictures, call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny, pictures[0])


def test_oversized_output_is_refused_before_any_work(tiny):
    # checked on the settings, so the test cannot run out of memory if the check is missing
    for edit in (False, True):
        with pytest.raises(ValueError, match="more than the limit"):
            image_settings(tiny.config, height=4096, width=4096, num_steps=None, guidance_scale=None,
                           seed=0, edit=edit)
    ok = image_settings(tiny.config, height=2048, width=2048, num_steps=None, guidance_scale=None, seed=0)
    assert (ok.height, ok.width) == (2048, 2048)


def test_step_defaults_are_per_decoder(tiny, pictures, monkeypatch):
    sampling = dataclasses.replace(tiny.config.sampling, num_steps=2, edit_num_steps=3)
    monkeypatch.setattr(tiny.config, "sampling", sampling)
    used = {}

    def spy(name, sample):
        def run(*args, num_steps, **kwargs):
            used[name] = num_steps
            return sample(*args, num_steps=num_steps, **kwargs)
        return run

    monkeypatch.setattr("nexusgen.pipelines.generate.generate_latents", spy("generate", generate_latents))
    monkeypatch.setattr("nexusgen.pipelines.edit.edit_latents", spy("edit", edit_latents))
    tiny.generate("a red circle")
    tiny.edit(pictures[0], "make it blue")
    assert used == {"generate": 2, "edit": 3}
    used.clear()
    tiny.edit(pictures[0], "make it blue", decoder="generation")  # the generation decoder's own count
    assert used == {"generate": 2}
    tiny.edit(pictures[0], "make it blue", num_steps=1)  # an argument overrides the default
    assert used["edit"] == 1
    monkeypatch.setattr(tiny.config, "sampling", dataclasses.replace(sampling, edit_num_steps=None))
    tiny.edit(pictures[0], "make it blue")
    assert used["edit"] == 2  # None: the editing decoder uses num_steps


@pytest.mark.parametrize("steps", [0, -1, 2.5])
def test_sampling_config_refuses_bad_step_counts(steps):
    from nexusgen.config import SamplingConfig
    for name in ("num_steps", "edit_num_steps"):
        with pytest.raises(ValueError, match=name):
            SamplingConfig(**{name: steps})


def test_progress_bar_only_when_asked(tiny, capsys):
    tiny._generate(prompt="a", progress=True)
    assert "generating" in capsys.readouterr().err
    tiny._generate(prompt="a", progress=False)
    assert capsys.readouterr().err == ""
