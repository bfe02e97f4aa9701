"""Text answers like the official app: the sync-free decode loop equals the interleaved loop token for token,
sampling options, empty questions describe the image, text-only questions, and the CLI."""

import pytest
import torch

from nexusgen.cli import main
from nexusgen.models.ar_generation import generate_interleaved
from nexusgen.models.text_generation import generate_text
from nexusgen.models.token_sampling import choose_tokens
from nexusgen.pipelines.understand import DEFAULT_MAX_NEW_TOKENS, DESCRIBE_PROMPT, understanding_messages


def _batch(tiny, pictures):
    messages = [understanding_messages("What colour?", 1), understanding_messages("Which is bigger?", 2),
                understanding_messages("hello there, a longer text-only question", 0)]
    images = [[pictures[0]], [pictures[0], pictures[1]], []]
    return tiny.processor.chat_inputs(messages, images)


def test_text_loop_equals_the_interleaved_loop(tiny, pictures, boost):
    """Greedy, three rows of different lengths, one row ending early (an end of turn at its 3rd token)."""
    model, batch = tiny.parts.ar_model, _batch(tiny, pictures)
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"])
    eos = model.eos_token_ids[0]
    outputs = []
    for run in (lambda: generate_text(model, *args, max_new_tokens=9),
                lambda: generate_interleaved(model, *args, max_new_tokens=9, max_images=0)):
        handle = model.vlm.lm_head.register_forward_hook(_end_row_one_at_step(eos, 2))
        try:
            outputs.append(run())
        finally:
            handle.remove()
    fast, reference = outputs
    assert [s.tolist() for s in fast.sequences] == [s.tolist() for s in reference.sequences]
    texts = [[tiny.processor.decode_answer(s) for s in out.sequences] for out in outputs]
    assert texts[0] == texts[1]
    assert len(fast.sequences[1]) == 3 and fast.sequences[1][-1] == eos and len(fast.sequences[0]) == 9


def _end_row_one_at_step(eos, step):
    calls = {"k": 0}

    def hook(module, inputs, output):
        if calls["k"] == step:
            output = output.clone()
            output[1, ..., eos] += 1e4
        calls["k"] += 1
        return output
    return hook


def test_sampling_options():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    assert torch.equal(choose_tokens(logits), logits.argmax(-1))
    top1 = choose_tokens(logits, True, 0.7, top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(top1, logits.argmax(-1))  # top-k 1 leaves only the argmax
    nucleus = choose_tokens(logits, True, 1.0, top_p=1e-6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(nucleus, logits.argmax(-1))  # the token that crosses top_p is always kept
    draws = [choose_tokens(logits, True, 5.0, generator=torch.Generator().manual_seed(s)) for s in range(6)]
    assert len({tuple(d.tolist()) for d in draws}) > 1  # a hot temperature really samples
    again = choose_tokens(logits, True, 5.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again, draws[3])  # and reproducibly


def test_understand_defaults_and_sampling(tiny, pictures):
    import inspect

    assert inspect.signature(tiny.understand).parameters["max_new_tokens"].default == DEFAULT_MAX_NEW_TOKENS == 1024
    greedy = tiny.understand(pictures[0], "What colour?", max_new_tokens=6)
    assert tiny.understand(pictures[0], "What colour?", max_new_tokens=6, temperature=0.8, top_k=1) == greedy
    sampled = {tiny.understand(pictures[0], "What colour?", max_new_tokens=6, temperature=50.0, seed=s)
               for s in range(4)}
    assert len(sampled) > 1
    with pytest.raises(ValueError, match="top_p"):
        tiny.understand(pictures[0], "What colour?", temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        tiny.understand(pictures[0], "What colour?", temperature=-1.0)


def test_empty_question_describes_the_image_and_text_only_questions(tiny, pictures, monkeypatch):
    asked, encode = [], tiny.processor.chat_inputs
    monkeypatch.setattr(tiny.processor, "chat_inputs",
                        lambda conversations, images: asked.append(conversations) or encode(conversations, images))
    described = tiny.understand(pictures[0], "", max_new_tokens=4)
    assert asked[-1] == [understanding_messages(DESCRIBE_PROMPT, 1)]
    assert described == tiny.understand(pictures[0], DESCRIBE_PROMPT, max_new_tokens=4)
    assert isinstance(tiny.understand(None, "What is a square?", max_new_tokens=4), str)
    assert asked[-1] == [understanding_messages("What is a square?", 0)]
    with pytest.raises(ValueError, match="empty"):
        tiny.understand(None, "  ", max_new_tokens=4)


def test_cli_text_only_question_and_bad_sampling(capsys):
    assert main(["understand", "--model", "tiny", "--prompt", "hello", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.endswith("\n")  # the answer's line (a random model's may be blank)
    assert main(["understand", "--model", "tiny", "--prompt", "hello", "--temperature", "1",
                 "--top-p", "2"]) == 2
    assert "--top-p" in capsys.readouterr().err
    assert main(["understand", "--model", "tiny", "--prompt", ""]) == 2  # no image: nothing to describe
