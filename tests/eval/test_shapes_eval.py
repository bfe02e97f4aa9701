"""The ShapesWorld harness end to end: oracle ~1.0, blank low, schema, score-only, CLI."""

import json

import pytest
from PIL import Image

from nexusgen.cli import main
from nexusgen.eval.oracle import BlankModel, OracleModel
from nexusgen.eval.shapes import ShapesEvalConfig, build_items, evaluate, score
from nexusgen.worlds.shapes import HELD_OUT_COMBOS, render_scene
from nexusgen.worlds.shapes.dataset import iter_samples

SMALL = dict(num=30, seed=7, worst=3)


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle")
    return out, evaluate(OracleModel(), out, ShapesEvalConfig(**SMALL))


def _check_schema(results):
    assert set(results) >= {"understanding", "generation", "editing", "model", "seed", "git_sha"}
    u, g, e = results["understanding"], results["generation"], results["editing"]
    assert isinstance(u["accuracy"], float) and isinstance(u["by_type"], dict) and isinstance(u["n"], int)
    assert isinstance(g["overall"], float) and isinstance(g["by_category"], dict) and isinstance(g["n"], int)
    assert isinstance(e["success"], float) and isinstance(e["psnr_outside"], float)
    assert isinstance(e["by_type"], dict) and isinstance(e["n"], int)
    assert e["decoder"] in ("editing", "generation")
    assert isinstance(results["model"], str) and isinstance(results["seed"], int)
    assert isinstance(results["git_sha"], str)
    assert set(u["by_type"]) == {"count", "color", "shape", "relation", "binding", "caption"}
    assert set(g["by_category"]) == {"single_object", "two_object", "counting", "colors", "position",
                                     "color_attr"}
    assert set(e["by_type"]) == {"recolour", "remove", "add", "move", "resize"}
    for section, key in ((u, "accuracy"), (g, "overall"), (e, "success")):
        assert section["compositional"]["n"] > 0 and key in section["compositional"]


def test_oracle_scores_one(oracle_run):
    out, results = oracle_run
    _check_schema(results)
    assert results["model"] == "oracle" and results["seed"] == 7
    assert results["understanding"]["accuracy"] == 1.0
    assert results["understanding"]["compositional"]["accuracy"] == 1.0
    assert results["generation"]["overall"] == 1.0
    assert results["generation"]["compositional"]["overall"] == 1.0
    assert results["editing"]["success"] == 1.0
    assert results["editing"]["psnr_outside"] >= 59.0 and results["editing"]["ssim_outside"] > 0.999
    captions = results["understanding"]["caption_errors"]
    assert captions["objects"] > 0 and all(v == 0 for k, v in captions.items() if k != "objects")
    assert results["understanding"]["n"] + results["understanding"]["compositional"]["n"] == 30
    assert json.loads((out / "results.json").read_text()) == results
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 90 and {s["task"] for s in samples} == {"understanding", "generation", "editing"}
    assert Image.open(out / "failures.png").size[0] > 0


def test_score_only_equals_first_scoring(oracle_run, tmp_path):
    out, results = oracle_run
    first = (out / "samples.jsonl").read_text()
    assert score(out) == results
    assert (out / "samples.jsonl").read_text() == first
    # Through the CLI, without any model.
    assert main(["eval", "shapes", "--out", str(out), "--score-only", "--model", "no-such-model"]) == 0
    assert json.loads((out / "results.json").read_text()) == results
    # Scoring reads the artifacts: a changed answer changes the score.
    answers = out / "understanding" / "answers.jsonl"
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    rows[0]["answer"] = "definitely not the answer"
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert score(out)["understanding"]["accuracy"] < 1.0


def test_blank_baseline_scores_low(tmp_path):
    results = evaluate(BlankModel(), tmp_path, ShapesEvalConfig(**SMALL))
    _check_schema(results)
    assert results["understanding"]["accuracy"] < 0.35  # "yes" is right on about half the yes/no items
    assert results["generation"]["overall"] == 0.0
    assert results["editing"]["success"] == 0.0
    assert (tmp_path / "failures.png").is_file()


def test_cli_end_to_end_with_the_oracle(tmp_path, capsys):
    assert main(["eval", "shapes", "--out", str(tmp_path), "--model", "oracle", "--num", "10",
                 "--seed", "3", "--decoder", "generation", "--prompt-style", "detailed"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["editing"]["decoder"] == "generation" and printed["generation"]["overall"] == 1.0
    assert printed["generation"]["prompt_style"] == "detailed" and printed["generation"]["scene_match"] == 1.0
    assert main(["eval", "shapes", "--out", str(tmp_path / "empty"), "--score-only"]) == 2  # clear error


def test_eval_items_are_fresh_and_deterministic():
    config = ShapesEvalConfig(num=40, seed=11)
    a, b = build_items(config), build_items(config)
    assert [i.to_dict() for i in a["edit"]] == [i.to_dict() for i in b["edit"]]
    # In-distribution items avoid held-out pairs; the compositional tail shows them.
    for item in a["understand"]:
        assert item.scene.has_combo(HELD_OUT_COMBOS) == item.compositional
    # Disjoint from training streams: no eval question is a training question about the same image.
    train = {(s.messages[0]["content"], s.images[0].tobytes()) for s in iter_samples(seed=11, stop=300)
             if s.task == "understand"}
    evals = {("<image>\n" + it.question, render_scene(it.scene, 64).tobytes()) for it in a["understand"]}
    assert not train & evals


def test_oracle_at_another_image_size(tmp_path):
    results = evaluate(OracleModel(image_size=128), tmp_path,
                       ShapesEvalConfig(num=10, seed=1, prompt_style="detailed"))
    assert results["image_size"] == 128
    assert results["generation"]["overall"] == 1.0 and results["generation"]["scene_match"] == 1.0
    assert results["editing"]["success"] == 1.0


def test_a_model_returning_the_wrong_number_of_outputs_is_an_error(tmp_path):
    class Broken(BlankModel):
        def generate(self, prompts, seed=0):
            return super().generate(prompts[:-1], seed)

    with pytest.raises(ValueError, match="returned"):
        evaluate(Broken(), tmp_path, ShapesEvalConfig(num=4, tasks=("generate",)))


def test_ground_truth_embeds_decode_each_items_own_scene(tiny_model):
    import numpy as np

    from nexusgen.eval.oracle import GroundTruthEmbedsModel

    items = build_items(ShapesEvalConfig(num=3, seed=5, tasks=("generate",)))["generate"]
    model = GroundTruthEmbedsModel(tiny_model)
    model.register(generate=items)
    got = model.generate([it.prompt for it in items], seed=4)
    scenes = [render_scene(it.scene, tiny_model.image_size) for it in items]
    want = tiny_model.decode(tiny_model.encode_images(scenes), seed=4)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, want, strict=True))
    model.register(generate=items)
    with pytest.raises(ValueError, match="order"):
        model.generate([items[1].prompt])


def test_ground_truth_embeds_edit_decodes_each_items_true_target_with_its_source(tiny_model):
    import numpy as np

    from nexusgen.eval.oracle import GroundTruthEmbedsModel

    items = build_items(ShapesEvalConfig(num=6, seed=5, tasks=("edit",)))["edit"][:2]
    model = GroundTruthEmbedsModel(tiny_model)
    model.register(edit=items)
    size = tiny_model.image_size
    sources = [render_scene(it.source, size) for it in items]
    got = model.edit(sources, [it.instruction for it in items], seed=4)
    targets = tiny_model.encode_images([render_scene(it.target, size) for it in items])
    want = tiny_model.decode(targets, seed=4, source=sources)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, want, strict=True))
    model.register(edit=items)
    generation = model.edit(sources, [it.instruction for it in items], decoder="generation", seed=4)
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(generation, tiny_model.decode(targets, seed=4), strict=True))


def test_editing_reports_the_ar_predictions_embedding_gain(tmp_path, tiny_model, oracle_run):
    import numpy as np

    from nexusgen.eval.metrics import edit_embedding_gain

    config = ShapesEvalConfig(num=6, seed=5, tasks=("edit",))
    section = evaluate(tiny_model, tmp_path, config)["editing"]
    items = build_items(config)["edit"]
    size = tiny_model.image_size
    main_items = [it for it in items if not it.compositional]
    sources = [render_scene(it.source, size) for it in main_items]
    want = edit_embedding_gain(tiny_model.predict_image_embeds([it.instruction for it in main_items], sources),
                               tiny_model.encode_images(sources),
                               tiny_model.encode_images([render_scene(it.target, size) for it in main_items]))
    assert section["embedding_gain"] == pytest.approx(float(np.nanmean(want)), abs=1e-6)
    assert set(section["embedding_gain_by_type"]) <= {"recolour", "remove", "add", "move", "resize"}
    assert score(tmp_path)["editing"]["embedding_gain"] == section["embedding_gain"]  # from the saved file
    assert "embedding_gain" not in oracle_run[1]["editing"]  # a reference model predicts no embeddings


def test_caption_errors_count_each_attribute(oracle_run, tmp_path):
    """One object put a column over in one caption: only the column error rate moves, by 1/objects; a
    caption naming one object too few counts as miscounted."""
    import dataclasses
    import shutil

    from nexusgen.worlds.shapes.language import join_list, object_with_place

    out = tmp_path / "run"
    shutil.copytree(oracle_run[0], out)
    items = build_items(ShapesEvalConfig(**SMALL))["understand"]
    captions = [i for i, item in enumerate(items) if item.qtype == "caption" and not item.compositional]
    assert len(captions) >= 2
    answers = out / "understanding" / "answers.jsonl"
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    moved, short = (items[i] for i in captions[:2])
    objects = list(moved.scene.sorted().objects)
    objects[0] = dataclasses.replace(objects[0], col=(objects[0].col + 1) % 3)
    rows[captions[0]]["answer"] = join_list([object_with_place(o, moved.lang) for o in objects], moved.lang)
    fewer = short.scene.sorted().objects[:-1]
    rows[captions[1]]["answer"] = join_list([object_with_place(o, short.lang) for o in fewer], short.lang) \
        if fewer else "yes"
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    errors = score(out)["understanding"]["caption_errors"]
    assert errors["column"] == pytest.approx(1 / errors["objects"])
    assert errors["row"] == errors["size"] == errors["color"] == errors["shape"] == 0
    assert errors["wrong_object_count"] == pytest.approx(1 / len(captions))


def test_tasks_are_named_by_the_task_vocabulary_and_the_section_names_are_aliases():
    assert ShapesEvalConfig(tasks=("generation", "edit")).tasks == ("generate", "edit")
    assert ShapesEvalConfig().tasks == ("understand", "generate", "edit")
    with pytest.raises(ValueError, match="subset of"):
        ShapesEvalConfig(tasks=("drawing",))
