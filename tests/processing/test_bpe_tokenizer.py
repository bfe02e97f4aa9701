"""Learned BPE tokenizers: round trips, special ids after the vocabulary, and the stored ShapesWorld one."""

import pytest

from nexusgen.processing.tokenizers import build_bpe_tokenizer, build_byte_tokenizer, build_tokenizer

TEXTS = ["a red circle left of a blue square", "make the green triangle bigger", "图中有几个三角形？"] * 20


def test_learned_bpe_round_trips_and_puts_specials_after_the_vocabulary():
    tokenizer = build_bpe_tokenizer(TEXTS, vocab_size=300)
    assert len(tokenizer) == 300 + 14
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == 300
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == 312
    for text in [*TEXTS[:3], "unseen words, émigré, 😀"]:  # bytes cover anything
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    # merges were learned: a training phrase is much shorter than its bytes
    assert len(tokenizer(TEXTS[0])["input_ids"]) < len(TEXTS[0]) / 2


def test_vocab_size_below_the_byte_alphabet_is_an_error():
    with pytest.raises(ValueError, match=">= 256"):
        build_bpe_tokenizer(TEXTS, vocab_size=100)


def test_stored_shapes_bpe_matches_the_shapes_mini_preset():
    from nexusgen.loading.autoregressive import build_autoregressive

    model, tokenizer, _ = build_autoregressive("shapes-mini")  # checks the special ids against the config
    assert model.config.tokenizer == "shapes-bpe" and len(tokenizer) == 1038
    prompt = "Generate an image according to the following description: a small red circle in the top left"
    assert tokenizer.decode(tokenizer(prompt)["input_ids"]) == prompt
    assert len(tokenizer(prompt)["input_ids"]) * 4 < len(build_byte_tokenizer()(prompt)["input_ids"])


def test_unknown_tokenizer_name():
    with pytest.raises(ValueError, match="shapes-bpe"):
        build_tokenizer("nope")
