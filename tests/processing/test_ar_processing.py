"""Processing: canonical templates (golden strings), the preprocessing rule, the image-only processor,
and the tokenizers' special-token ids against the official ones."""

import pytest
import torch
from PIL import Image

from nexusgen.models.autoregressive import ARConfig
from nexusgen.processing import (
    NexusGenProcessor,
    build_byte_tokenizer,
    build_qwen25_tokenizer,
    check_special_token_ids,
    render_chat,
    resize_bounded,
    resize_fixed,
    special_token_ids,
    to_rgb,
    user_text,
)
from nexusgen.processing.images import load_image
from nexusgen.processing.processor import build_image_processor
from nexusgen.processing.templates import IMAGE_SLOT, is_edit_instruction, join_image_text

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


@pytest.fixture(scope="module")
def processor():
    config = ARConfig.from_preset("tiny")
    vision = config.qwen_config.vision_config
    ip = build_image_processor(patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
                               min_pixels=config.min_input_pixels, max_pixels=config.max_input_pixels)
    return NexusGenProcessor(build_byte_tokenizer(), ip, config)


@pytest.mark.parametrize("language,task,prompt,expected", [
    ("en", "generate", "a red kite",
     "<|im_start|>user\nGenerate an image according to the following description: a red kite<|im_end|>\n"
     "<|im_start|>assistant\nHere is an image based on the description: <|vision_start|>"),
    ("zh", "generate", "一只红色的风筝",
     "<|im_start|>user\n根据以下描述生成一张图像：一只红色的风筝<|im_end|>\n"
     "<|im_start|>assistant\n这是根据您的描述生成的图像：<|vision_start|>"),
    ("en", "edit", "make it blue",
     "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|> make it blue<|im_end|>\n"
     "<|im_start|>assistant\nHere is the image: <|vision_start|>"),
    ("zh", "edit", "把它变成蓝色",
     "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|> 把它变成蓝色<|im_end|>\n"
     "<|im_start|>assistant\n以下为编辑后的图像：<|vision_start|>"),
])
def test_canonical_image_prompts_golden(processor, language, task, prompt, expected):
    images = [Image.new("RGB", (48, 48), "red")] if task == "edit" else None
    batch = processor.image_prompt_inputs(prompt, images, language=language, task=task)
    text = processor.tokenizer.decode(batch["input_ids"][0])
    # the single image pad is repeated once per image token (48 px / 16 px tokens -> 3x3 = 9)
    assert text == SYSTEM + expected.replace("<|image_pad|>", "<|image_pad|>" * (9 if task == "edit" else 1))
    assert int(batch["input_ids"][0, -1]) == special_token_ids(processor.tokenizer)["vision_start"]


def test_user_text_rules():
    assert user_text("<image> swap the colours", "edit") == "<image> swap the colours"  # kept as given
    assert user_text("swap", "edit", "zh") == "<image> swap"
    for bad in ("", "   "):
        with pytest.raises(ValueError, match="empty prompt"):
            user_text(bad)
    with pytest.raises(ValueError, match="language"):
        user_text("x", "generate", "fr")
    with pytest.raises(ValueError, match="cannot contain"):
        user_text("a <image> b", "generate")


def test_render_chat_marks_assistant_text_trainable():
    chat = render_chat([{"role": "user", "content": "<image> hi"},
                        {"role": "assistant", "content": "ok <image>"}])
    trained = "".join(chat.text[a:b] for a, b in chat.trainable_spans)
    assert trained == "ok <|vision_start|><|image_pad|><|vision_end|><|im_end|>"
    assert chat.image_roles == ["user", "assistant"]
    with pytest.raises(ValueError, match="role"):
        render_chat([{"role": "robot", "content": "x"}])


SPECIAL_TOKENS = ["<|im_end|>", "<|im_start|>", "<|endoftext|>", "<|image_pad|>", "<|vision_start|>",
                  "<|vision_end|>", "<|video_pad|>"]


def _control_ids(processor) -> set[int]:
    return {processor.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def _count(ids, wanted: set[int]) -> int:
    return sum(int(t) in wanted for t in ids)


@pytest.mark.parametrize("token", SPECIAL_TOKENS)
def test_special_tokens_typed_in_a_prompt_are_text(processor, token):
    # a typed <|im_end|> used to end the user turn (the answer came out empty), a typed <|image_pad|>
    # desynchronised the image count: user text is tokenized with special-token parsing off
    controls = _control_ids(processor)
    plain = processor.image_prompt_inputs("a b")["input_ids"][0]
    typed = processor.image_prompt_inputs(f"a {token} b")["input_ids"][0]
    assert _count(typed, controls) == _count(plain, controls)  # the template's own, no more
    text = processor.tokenizer.decode(typed.tolist(), skip_special_tokens=True)
    assert token in text  # spelled out as characters
    picture = Image.new("RGB", (48, 48))
    asked = processor.chat_inputs([[{"role": "user", "content": [IMAGE_SLOT, f"\nwhat is {token}?"]}]], [[picture]])
    baseline = processor.chat_inputs([[{"role": "user", "content": [IMAGE_SLOT, "\nwhat is x?"]}]], [[picture]])
    assert _count(asked["input_ids"][0], controls) == _count(baseline["input_ids"][0], controls)


def test_image_placeholders_place_images_only_in_the_official_format(processor):
    picture = Image.new("RGB", (48, 48))
    official = processor.encode([{"role": "user", "content": "<image> make it red"}], [picture])
    parts = processor.encode([{"role": "user", "content": [IMAGE_SLOT, " make it red"]}], [picture])
    assert official.input_ids == parts.input_ids  # the same request, two spellings
    literal = processor.encode([{"role": "user", "content": ["what does <image> mean?"]}])
    assert _count(literal.input_ids, _control_ids(processor)) == 4  # im_start/end of system and user only
    with pytest.raises(ValueError, match="placeholders"):
        processor.encode([{"role": "user", "content": "<image> x"}], [])  # official format: an image


@pytest.mark.parametrize("text, edit", [
    ("Make the red circle green.", True), ("remove the blue square", True), ("Please add a hat.", True),
    ("把红色圆形变成绿色。", True), ("请删除蓝色正方形。", True), ("Describe the image.", False),
    ("What shape is on the right?", False), ("Count the circles.", False), ("Make it red?", False),
    ("图中有几个图形？", False), ("描述这张图片。", False), ("Give a detailed description of the image.", False),
])
def test_edit_instructions_get_the_editing_layout(text, edit):
    assert is_edit_instruction(text) is edit
    joined = join_image_text([IMAGE_SLOT, text])
    assert joined == [IMAGE_SLOT, " " if edit else "\n", text]
    assert join_image_text([IMAGE_SLOT, IMAGE_SLOT, "\nWhich is bigger?"]) == [
        IMAGE_SLOT, "\n", IMAGE_SLOT, "\nWhich is bigger?"]  # a separator the caller gave is kept


def _png_header(path, width, height):
    """A PNG whose header claims width x height (nothing decodable after it): opening reads only this."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_load_image_refuses_too_many_pixels_with_one_error_and_no_warning(tmp_path):
    import warnings

    path = _png_header(tmp_path / "bomb.png", 10_000, 9_000)  # 90 MP: above PIL's 89 MP warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="more than the limit"):
            load_image(path)
    assert caught == []  # the CLI prints every warning: a bomb warning made the error three lines


def test_resize_fixed_crops_instead_of_stretching():
    image = Image.new("RGB", (200, 100), "white")
    image.paste((255, 0, 0), (0, 0, 50, 100))  # left quarter red: cropped away by a centre crop
    image.paste((0, 0, 255), (50, 0, 100, 100))  # second quarter blue: the left half of the crop
    out = resize_fixed(image, (64, 64))
    assert out.size == (64, 64)
    assert out.getpixel((5, 32)) == (0, 0, 255) and out.getpixel((58, 32)) == (255, 255, 255)
    tall = resize_fixed(Image.new("RGB", (30, 90), "green"), (32, 64))  # (height, width)
    assert tall.size == (64, 32)


def test_resize_bounded_keeps_aspect_within_bounds():
    out = resize_bounded(Image.new("RGB", (1000, 500)), token_px=16, max_pixels=128 * 128, min_pixels=32 * 32)
    assert out.width % 16 == 0 and out.height % 16 == 0 and out.width * out.height <= 128 * 128
    assert out.size == (176, 80)  # Qwen2.5-VL's smart_resize: floors each side to a token multiple
    small = resize_bounded(Image.new("RGB", (10, 10)), token_px=16, max_pixels=128 * 128, min_pixels=32 * 32)
    assert small.size == (32, 32)


def test_transparency_becomes_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)


def test_processor_counts_and_masks(processor):
    image = Image.new("RGB", (100, 70), "red")  # bounded -> 96 x 64 px -> 6 x 4 = 24 tokens
    sample = processor.encode([{"role": "user", "content": "<image>\nWhat colour?"},
                               {"role": "assistant", "content": "Red."}], [image])
    ids = special_token_ids(processor.tokenizer)
    assert sample.image_grid_thw.tolist() == [[1, 8, 12]]
    assert sum(t == ids["image_pad"] for t in sample.input_ids) == 24
    text_only = processor.encode([{"role": "user", "content": "hi"}])
    batch = processor.pad([sample, text_only], padding_side="left")
    assert batch["mm_token_type_ids"].sum() == 24 and batch["attention_mask"][1, 0] == 0
    with pytest.raises(ValueError, match="placeholders"):
        processor.encode([{"role": "user", "content": "<image> x"}], [])


def test_byte_tokenizer_round_trips_chinese():
    tok = build_byte_tokenizer()
    text = "根据以下描述生成一张图像：红色"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert len(tok) == 270


def test_real_qwen25_vocabulary_special_ids():
    """The offline-built Qwen2.5 tokenizer gives the official ids (docs/upstream.md §2.1); so does the real preset."""
    tok = build_qwen25_tokenizer()
    ids = special_token_ids(tok)
    assert (ids["vision_start"], ids["vision_end"], ids["image_pad"], ids["im_end"], ids["pad"]) == (
        151652, 151653, 151655, 151645, 151643)
    assert tok("Hello, world!", add_special_tokens=False)["input_ids"] == [9707, 11, 1879, 0]
    check_special_token_ids(tok, ARConfig.from_preset("nexus-gen-v2").qwen_config)
    with pytest.raises(ValueError, match="image_token_id"):
        check_special_token_ids(tok, ARConfig.from_preset("tiny").qwen_config)
    batch_ids = tok("<|vision_start|><|image_pad|><|vision_end|>", add_special_tokens=False)["input_ids"]
    assert torch.tensor(batch_ids).tolist() == [151652, 151655, 151653]


def test_image_markers_stand_only_for_real_images():
    from nexusgen.processing import decode_with_image_markers

    tokenizer = build_byte_tokenizer()
    ids = special_token_ids(tokenizer)
    start, end, pad = ids["vision_start"], ids["vision_end"], ids["image_pad"]
    literal = tokenizer.encode("see <image> here ", add_special_tokens=False)  # spelled out as text
    real = [start, pad, pad, end]
    decoded = decode_with_image_markers(tokenizer, literal + real + tokenizer.encode(" done"), start, end)
    assert decoded == "see  here <image> done"
    assert decode_with_image_markers(tokenizer, real[:2], start, end) == "<image>"  # unclosed span
