"""Understanding and chat pipelines at the tiny preset: parity with stock transformers generation,
batch == single, token budgets, interleaved image answers, text-only models and input errors."""


import numpy as np
import pytest
import torch
from PIL import Image

from nexusgen.api import NexusGen
from nexusgen.pipelines.understand import understanding_messages
from nexusgen.processing.templates import IMAGE_SLOT


def test_understanding_equals_stock_qwen_generation(tiny, pictures, monkeypatch):
    """Greedy answers with our KV-cached loop == transformers' own `generate` on the same inputs, which put
    the question after the image, as the training data does."""
    model, processor = tiny.parts.ar_model, tiny.processor
    asked, encode = [], processor.chat_inputs
    monkeypatch.setattr(processor, "chat_inputs", lambda conversations, images: asked.append(conversations)
                        or encode(conversations, images))
    out = tiny._understand(image=pictures[1], prompt="What shape is this?", max_new_tokens=12)
    messages = understanding_messages("What shape is this?", 1)
    assert asked == [[messages]]
    assert messages[0]["content"] == [IMAGE_SLOT, "\n", "What shape is this?"]
    batch = processor.chat_inputs([messages], [[pictures[1]]])
    banned = [model.vision_start_token_id, model.vision_end_token_id, model.image_token_id,
              int(model.config.qwen_config.video_token_id)]
    stock = model.vlm.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                               mm_token_type_ids=(batch["input_ids"] == model.image_token_id).int(),
                               max_new_tokens=12, do_sample=False,
                               bad_words_ids=[[t] for t in banned], eos_token_id=model.eos_token_ids,
                               pad_token_id=processor.ids["pad"])
    new = stock[0, batch["input_ids"].shape[1]:]
    n = out.num_new_tokens[0]
    assert n >= 1
    assert out.texts[0] == processor.tokenizer.decode(new[:n], skip_special_tokens=True)


def test_understanding_batch_equals_single(tiny, pictures):
    square, wide = pictures
    entries = [square, [square, wide], None]  # one image, two images, text only
    prompts = ["What colour?", "Which is bigger?", "你好"]
    batch = tiny.understand(entries, prompts, max_new_tokens=10)
    assert isinstance(batch, list) and len(batch) == 3
    for entry, prompt, answer in zip(entries, prompts, batch, strict=True):
        assert tiny.understand(entry, prompt, max_new_tokens=10) == answer


def test_understanding_token_budget(tiny, pictures, boost):
    letter = tiny.processor.tokenizer.convert_tokens_to_ids("a")
    handle = boost(tiny.parts.ar_model, [letter])  # never an end of turn: the budget ends the answer
    try:
        out = tiny._understand(image=pictures[0], prompt="Say a", max_new_tokens=7)
    finally:
        handle.remove()
    assert out.num_new_tokens == [7] and out.texts == ["aaaaaaa"]


def test_chat_answers_with_an_image_and_continues(tiny, pictures, boost):
    ar = tiny.parts.ar_model
    conversation = [{"role": "user", "content": ["Look at this", pictures[0], "and draw it in blue"]}]
    handle = boost(ar, [ar.vision_start_token_id, ar.eos_token_ids[0]])
    try:
        reply = tiny.chat(conversation, seed=3)
    finally:
        handle.remove()
    assert reply.text == "<image>" and len(reply.images) == 1 and reply.images[0].size == (64, 64)
    assert reply.message["role"] == "assistant" and reply.message["content"] == reply.images
    # same seed, same image; the assistant image is part of the next turn's input
    handle = boost(ar, [ar.vision_start_token_id, ar.eos_token_ids[0]])
    try:
        again = tiny.chat(conversation, seed=3)
    finally:
        handle.remove()
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(reply.images[0]))
    follow_up = tiny.chat([*conversation, reply.message, {"role": "user", "content": "Now describe it"}],
                          max_new_tokens=6)
    assert isinstance(follow_up.text, str) and follow_up.images == []


def test_chat_batch_seeds_images_per_conversation(tiny, boost):
    ar = tiny.parts.ar_model
    conversations = [[{"role": "user", "content": "draw a circle"}]] * 2
    handle = boost(ar, [ar.vision_start_token_id, ar.eos_token_ids[0]])
    try:
        replies = tiny.chat(conversations, seed=0)
    finally:
        handle.remove()
    assert len(replies) == 2 and all(len(r.images) == 1 for r in replies)
    # identical prompts and embeddings: only the per-conversation seed (seed + b) tells them apart
    first, second = (np.asarray(r.images[0], dtype=int) for r in replies)
    assert np.abs(first - second).max() > 0


def test_chat_list_seeds_and_sampling_do_not_depend_on_the_batch(tiny, boost):
    ar = tiny.parts.ar_model
    draw = [{"role": "user", "content": "draw a circle"}]
    other = [{"role": "user", "content": "what is this, tell me more"}]
    replies = []
    for conversations, seed in (([other, draw], [4, 9]), (draw, 9)):
        handle = boost(ar, [ar.vision_start_token_id, ar.eos_token_ids[0]])  # every row draws one image
        try:
            replies.append(tiny.chat(conversations, seed=seed))
        finally:
            handle.remove()
    pair, alone = replies
    in_batch, single = (np.asarray(r.images[0], dtype=int) for r in (pair[1], alone))
    assert np.abs(in_batch - single).max() <= 1  # float rounding of the random tiny model only
    assert np.abs(np.asarray(pair[0].images[0], dtype=int) - single).max() > 1  # seed 4 is another image
    # sampling: one token stream per conversation, seeded with its seed
    sampled = tiny.chat([other, draw], seed=[4, 9], temperature=1.5, top_p=0.9, max_new_tokens=6,
                        image_output=False)
    assert sampled[0].text == tiny.chat(other, seed=4, temperature=1.5, top_p=0.9, max_new_tokens=6,
                                        image_output=False).text
    assert sampled[1].text == tiny.chat(draw, seed=9, temperature=1.5, top_p=0.9, max_new_tokens=6,
                                        image_output=False).text
    greedy = tiny.chat(other, seed=4, max_new_tokens=6, image_output=False).text
    texts = {tiny.chat(other, seed=s, temperature=2.0, max_new_tokens=6, image_output=False).text
             for s in range(4)}
    assert len(texts) > 1 and tiny.chat(other, seed=99, max_new_tokens=6, image_output=False).text == greedy


def test_chat_without_image_output_never_opens_an_image(tiny, boost):
    ar = tiny.parts.ar_model
    handle = boost(ar, [ar.vision_start_token_id])
    try:
        reply = tiny.chat([{"role": "user", "content": "draw"}], max_new_tokens=4, image_output=False)
        drawn = tiny.chat([{"role": "user", "content": "draw"}], max_new_tokens=4)
    finally:
        handle.remove()
    assert reply.images == [] and "<image>" not in reply.text
    assert len(drawn.images) == 1  # the same boost opens an image when images are allowed


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -0.1}, "temperature must be a finite number between 0"),
    ({"temperature": float("nan")}, "temperature must be a finite number"),
    ({"top_p": 0.0}, r"top_p must be a number in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be a number in \(0, 1\]"),
    ({"seed": [1, 2]}, "2 seeds for 1 conversations"),
])
def test_chat_rejects_bad_sampling_settings(tiny, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny.chat([{"role": "user", "content": "hi"}], **kwargs)


def test_text_only_model_never_opens_an_image(tiny, boost):
    parts = tiny.parts.replace(generation_decoder=None)
    text_only = NexusGen(parts, name="text-only", progress=False)
    ar = parts.ar_model
    handle = boost(ar, [ar.vision_start_token_id])
    try:
        reply = text_only.chat([{"role": "user", "content": "draw"}], max_new_tokens=4)
    finally:
        handle.remove()
    assert reply.images == [] and "<image>" not in reply.text
    with pytest.raises(ValueError, match="no generation decoder"):
        text_only.generate("a red circle")


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": "a <image> b"}], "pass images as PIL parts"),
    ([{"role": "assistant", "content": "hi"}], "must end with a user message"),
    ([{"role": "user", "content": 5}], "content must be"),
    ([{"role": "robot", "content": "hi"}], "unknown role"),
    ([{"role": "user", "content": "hi", "extra": 1}], "expected"),
])
def test_chat_rejects_malformed_conversations(tiny, messages, message):
    with pytest.raises(ValueError, match=message):
        tiny.chat(messages)


def test_understand_rejects_bad_inputs(tiny, pictures):
    with pytest.raises(ValueError, match="2 prompts need a list of 2"):
        tiny.understand([pictures[0]], ["a", "b"])
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny.understand(pictures[0], "a", max_new_tokens=0)
    with pytest.raises(ValueError, match="more than the limit"):
        tiny._understand(image=Image.new("1", (9000, 8000)), prompt="a")
    with pytest.raises(ValueError, match="empty"):  # with an image, "" asks for a description instead
        tiny.understand(None, "  ")


def test_embeddings_batch_equals_single_and_one_pass(tiny, pictures):
    prompts = ["a red circle", "a much longer prompt about two blue squares"]
    batch = tiny.predict_image_embeds(prompts)
    assert batch.shape == (2, 16, 64)
    for b, prompt in enumerate(prompts):
        torch.testing.assert_close(tiny.predict_image_embeds(prompt)[0], batch[b], atol=1e-5, rtol=1e-5)
    edit = tiny.predict_image_embeds(["make it red"], [pictures[1]])
    assert edit.shape == (1, 16, 64)
    assert (edit - tiny.predict_image_embeds("make it red")).abs().max() > 1e-4  # the image matters
