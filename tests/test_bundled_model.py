"""The committed shapes-mini model: it loads by name, and scores above a floor on a small fixed eval.

A regression guard, not the quality measure (that is `nexusgen eval shapes --num 500`, README). The floors
sit well below the scores measured on these exact items when the model was bundled (FLOORS' comment), so
sampling noise does not trip them, but a broken loader, template, tokenizer, decoder or sampler does: the
blank model scores under every floor.
"""

import pytest

from nexusgen.api import NexusGen
from nexusgen.commands.demo import run_demo
from nexusgen.eval.shapes import ShapesEvalConfig, evaluate
from nexusgen.loading.folder import BUNDLED

EVAL = ShapesEvalConfig(num=24, seed=4242, worst=2)
# Measured on these items (19 in-distribution per task) when the model was bundled (v13): understanding 0.84,
# generation 1.00, editing success 0.79 (15 of 19) with PSNR outside the edit 31.4 dB (guidance 2; v12: 0.89,
# 1.00, 0.84, 31.1 dB). The blank model scores 0.11, 0.0, 0.0 and 19.4 dB. Floors sit a third or more below the model.
FLOORS = {("understanding", "accuracy"): 0.53, ("generation", "overall"): 0.56, ("editing", "success"): 0.5,
          ("editing", "psnr_outside"): 23.0}


@pytest.fixture(scope="module")
def bundled():
    return NexusGen.from_pretrained("shapes-mini", progress=False)


def test_the_bundled_model_is_committed_small_and_loads_by_name(bundled):
    size = sum(p.stat().st_size for p in BUNDLED["shapes-mini"].rglob("*") if p.is_file())
    assert size <= 60 * 2**20
    assert bundled.name == "shapes-mini" and bundled.image_size == 64
    assert bundled.config.parts == ["autoregressive", "generation_decoder", "editing_decoder", "vae"]


def _scores(results) -> dict:
    return {(task, key): results[task][key] for task, key in FLOORS}


def test_the_bundled_model_scores_above_its_floors(bundled, tmp_path):
    scores = _scores(evaluate(bundled, tmp_path, EVAL))
    assert all(scores[k] >= FLOORS[k] for k in FLOORS), (scores, FLOORS)


def test_the_floors_fail_a_model_without_training(tmp_path):
    from nexusgen.eval.oracle import BlankModel

    scores = _scores(evaluate(BlankModel(image_size=64), tmp_path, EVAL))
    assert all(scores[k] < FLOORS[k] for k in FLOORS), (scores, FLOORS)


def test_demo_on_the_bundled_model_answers_and_writes_its_sheet(bundled, tmp_path):
    lines = run_demo(bundled, tmp_path, seed=0)
    assert (tmp_path / "demo.png").is_file() and lines[-1].endswith("demo.png")
    answers = [line for line in lines if line.startswith("Q: ")]
    assert len(answers) == 3


def test_chat_edits_an_attached_image_as_edit_does(bundled):
    # chat joins an attached image and an instruction as the editing data does ("<image> Make ..."); without
    # the space ("<image>Make ...") the model read it as a question and the edit did nothing
    scene = bundled.generate("a red circle left of a blue square", seed=0)
    assert bundled.understand(scene, "What color is the circle?") == "red"
    reply = bundled.chat([{"role": "user", "content": [scene, "Make the red circle green."]}])
    assert len(reply.images) == 1
    assert bundled.understand(reply.images[0], "What color is the circle?") == "green"
    answer = bundled.chat([{"role": "user", "content": [scene, "What color is the circle?"]}])
    assert answer.text == "red" and answer.images == []  # a question keeps the question layout


def test_a_typed_special_token_is_text_not_the_end_of_the_turn(bundled):
    # "<|im_end|>" typed in a question used to close the user turn: the answer came out empty
    scene = bundled.generate("a red circle left of a blue square", seed=0)
    assert bundled.understand(scene, "How many shapes are there?<|im_end|>").strip() != ""
    image = bundled.generate("a green triangle <|im_end|>", seed=0)
    assert image.size == (64, 64)
