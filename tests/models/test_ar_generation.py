"""Interleaved generation at the tiny preset: positions of generated images and of the text after them
equal what training gives the same sequence, images are filled in one step (equal to the one-pass
prediction), batches with rows in different states equal single runs, forcing and limits work."""

import pytest
import torch
from PIL import Image

from nexusgen.loading.autoregressive import build_autoregressive
from nexusgen.processing import NexusGenProcessor


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer, image_processor = build_autoregressive("tiny", seed=0)
    return model.eval(), NexusGenProcessor(tokenizer, image_processor, model.config)


def _boost(model, token_id: int, amount: float = 1e4):
    """Make `token_id` the argmax of every sampled distribution (a forward hook on lm_head)."""
    def hook(module, inputs, output):
        output = output.clone()
        output[..., token_id] += amount
        return output
    return model.vlm.lm_head.register_forward_hook(hook)


def _training_positions(model, batch, row, out):
    """Positions training assigns to prompt + generated sequence (every generated image as a target)."""
    ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
    sequence = out.sequences[row]
    if int(sequence[0]) == model.vision_start_token_id and int(ids[-1]) == model.vision_start_token_id:
        ids = ids[:-1]  # the <|vision_start|> ending the prompt is repeated at the front of the output
    full = torch.cat([ids, sequence])[None]
    input_grids = batch["image_grid_thw"] if row == 0 else batch["image_grid_thw"][:0]
    out_grids = torch.tensor([model.config.output_grid_thw] * len(out.image_embeds[row]))
    grids = torch.cat([input_grids, out_grids])
    positions = model.compute_positions(full, torch.ones_like(full), grids)
    return positions[:, 0, -len(sequence):]


def test_generated_image_positions_equal_an_input_image(tiny):
    model, processor = tiny
    batch = processor.image_prompt_inputs("a red circle")
    out = model.generate_interleaved(batch["input_ids"], batch["attention_mask"], max_new_tokens=20)
    n, positions = model.num_output_tokens, out.position_ids[0]
    assert int(out.sequences[0][0]) == model.vision_start_token_id
    # the same tokens as a *real* input image of the output size, through the stock processor path
    image = processor.encode([{"role": "user", "content": "<image>"}], [Image.new("RGB", (64, 64))])
    assert image.image_grid_thw.tolist() == [list(model.config.output_grid_thw)]
    ids = torch.tensor(batch["input_ids"][0].tolist() + [model.image_token_id] * n)[None]
    real = model.compute_positions(ids, torch.ones_like(ids), image.image_grid_thw)[:, 0, -n:]
    assert torch.equal(positions[:, 1:n + 1], real)
    s = int(positions[0, 0]) + 1  # (s, s + r, s + c) for token (r, c) of the 4 x 4 grid
    assert positions[:, 1 + 5].tolist() == [s, s + 1, s + 1] and positions[:, n].tolist() == [s, s + 3, s + 3]
    assert int(positions[0, n + 1]) == s + 4  # <|vision_end|> at s + max(rows, cols), not p + N + 1
    one_pass = model.predict_image_embeds(batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(out.image_embeds[0][0], one_pass[0], atol=1e-5)


def test_text_after_images_has_training_positions(tiny):
    """Several images per answer (the model is pushed to open images), then text: every generated token
    has exactly the position that teacher-forced training gives the same sequence."""
    model, processor = tiny
    question = [{"role": "user", "content": "<image> Draw two pictures, then explain."}]
    batch = processor.chat_inputs([question], [[Image.new("RGB", (80, 48), "blue")]])
    handle = _boost(model, model.vision_start_token_id)
    try:
        out = model.generate_interleaved(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                         batch["image_grid_thw"], max_new_tokens=60, max_images=2)
    finally:
        handle.remove()
    n = model.num_output_tokens
    assert len(out.image_embeds[0]) == 2 and len(out.sequences[0]) == 60
    text = processor.decode_answer(out.sequences[0])
    assert text.startswith("<image><image>") and text.count("<image>") == 2
    assert int((out.sequences[0] == model.image_token_id).sum()) == 2 * n
    assert torch.equal(out.position_ids[0], _training_positions(model, batch, 0, out))


def test_batch_with_rows_in_different_states_equals_single_runs(tiny):
    """Row 0 fills an image (N + 2 tokens in one step) while row 1 writes text: in-step padding and the
    resulting holes in the KV cache must not change either row."""
    model, processor = tiny
    image_prompt = processor.image_prompt_inputs("a blue square")
    chat = processor.chat_inputs([[{"role": "user", "content": "Say something long about shapes."}]])
    rows = [image_prompt, chat]
    width = max(r["input_ids"].shape[1] for r in rows)
    ids = torch.stack([torch.nn.functional.pad(r["input_ids"][0], (width - r["input_ids"].shape[1], 0))
                       for r in rows])
    mask = torch.stack([torch.nn.functional.pad(r["attention_mask"][0], (width - r["input_ids"].shape[1], 0))
                        for r in rows])
    both = model.generate_interleaved(ids, mask, max_new_tokens=30)
    for row, single_inputs in enumerate(rows):
        single = model.generate_interleaved(single_inputs["input_ids"], single_inputs["attention_mask"],
                                            max_new_tokens=30)
        assert torch.equal(both.sequences[row], single.sequences[0])
        assert torch.equal(both.position_ids[row], single.position_ids[0])
        assert len(both.image_embeds[row]) == len(single.image_embeds[0])
        for a, b in zip(both.image_embeds[row], single.image_embeds[0]):
            assert torch.allclose(a, b, atol=1e-5)


def test_force_image_and_limits(tiny):
    model, processor = tiny
    chat = processor.chat_inputs([[{"role": "user", "content": "hello"}]])
    eos = model.eos_token_ids[0]
    handle = _boost(model, eos)
    try:
        plain = model.generate_interleaved(chat["input_ids"], max_new_tokens=50)
        forced = model.generate_interleaved(chat["input_ids"], max_new_tokens=50, force_image=True)
    finally:
        handle.remove()
    n = model.num_output_tokens
    assert plain.sequences[0].tolist() == [eos] and plain.image_embeds[0] == []
    assert forced.sequences[0].tolist() == ([model.vision_start_token_id] + [model.image_token_id] * n
                                            + [model.vision_end_token_id, eos])
    forced_late = model.generate_interleaved(chat["input_ids"], max_new_tokens=3, force_image=True)
    assert len(forced_late.image_embeds[0]) == 1  # the token limit would have come first
    assert forced_late.sequences[0].tolist().index(model.vision_start_token_id) <= 2
    handle = _boost(model, model.vision_start_token_id)
    try:
        limited = model.generate_interleaved(chat["input_ids"], max_new_tokens=40, max_images=1)
    finally:
        handle.remove()
    assert len(limited.image_embeds[0]) == 1
    banned = {model.vision_end_token_id, model.image_token_id}
    text_tokens = [t for t in limited.sequences[0].tolist()[n + 2:]]
    assert not banned & set(text_tokens)  # forced-only tokens are never sampled


def test_sampling_is_reproducible(tiny):
    model, processor = tiny
    chat = processor.chat_inputs([[{"role": "user", "content": "hi"}]] * 2)

    def run(seed):
        return model.generate_interleaved(chat["input_ids"], max_new_tokens=12, do_sample=True,
                                          temperature=0.8, top_k=50, top_p=0.9,
                                          generator=torch.Generator().manual_seed(seed))
    first, second = run(3), run(3)
    assert all(torch.equal(a, b) for a, b in zip(first.sequences, second.sequences))
