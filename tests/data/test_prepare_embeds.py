"""`prepare-embeds`: parity with the model's own encode/predict paths, resume after a crash, bad records."""

import json
from pathlib import Path

import pytest
import torch

from nexusgen.data import prepare as prepare_module
from nexusgen.data.embeds import EditEmbedDataset, GenEmbedDataset, load_embeds
from nexusgen.data.messages import BadRecordError, MessageDataset
from nexusgen.data.prepare import file_stem, prepare_embeds, read_done_ids
from nexusgen.data.synthetic import SyntheticSource, write_jsonl
from nexusgen.models.autoregressive import ARConfig, NexusGenARModel
from nexusgen.processing import NexusGenProcessor, build_byte_tokenizer, resize_fixed
from nexusgen.processing.processor import build_image_processor

MODEL = "tiny-test-model"  # only a name in the manifest: the tests pass the parts directly


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    config = ARConfig.from_preset("tiny")
    model = NexusGenARModel(config).eval()
    image_processor = build_image_processor(patch_size=8, merge_size=2, min_pixels=config.min_input_pixels,
                                            max_pixels=config.max_input_pixels)
    return model, build_byte_tokenizer(), image_processor


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    gen = write_jsonl(SyntheticSource(5, seed=1, image_size=48, tasks=("generate",)), folder / "gen.jsonl")
    edit = write_jsonl(SyntheticSource(3, seed=2, image_size=40, tasks=("edit",)), folder / "edit.jsonl")
    return gen, edit


def _encode(model, image_processor, image, size_hw):
    out = image_processor(images=[resize_fixed(image, size_hw)], do_resize=False, return_tensors="pt")
    return model.encode_images(out["pixel_values"].float(), out["image_grid_thw"])[0]


def test_gen_embeddings_equal_the_model_encoding_of_the_target(parts, data, tmp_path):
    model, _, image_processor = parts
    summary = prepare_embeds(data[0], MODEL, "generate", tmp_path, batch_size=2, parts=parts)
    assert summary["written"] == 5 and summary["bad"] == {} and summary["already_done"] == 0
    dataset = GenEmbedDataset(summary["out"], num_tokens=16, embed_dim=64)
    originals = MessageDataset(data[0])
    for i in range(5):
        sample = dataset[i]
        expected = _encode(model, image_processor, originals[i]["images"][0], (64, 64))  # (16, 64)
        torch.testing.assert_close(sample["image_embeds"], expected, rtol=1e-5, atol=1e-5)
        assert sample["image_grid"] == (4, 4) and sample["id"] == originals[i]["id"]
        assert list(sample["target_image"].getdata()) == list(originals[i]["images"][0].getdata())
    assert {p.name for p in (tmp_path / "embeds").iterdir()} == {f"{file_stem(s)}.safetensors" for s in
                                                                  (originals[i]["id"] for i in range(5))}


def test_edit_embeddings_equal_the_inference_path(parts, data, tmp_path):
    model, tokenizer, image_processor = parts
    summary = prepare_embeds(data[1], MODEL, "edit", tmp_path, batch_size=3, parts=parts)
    assert summary["written"] == 3
    dataset = EditEmbedDataset(summary["out"])
    processor = NexusGenProcessor(tokenizer, image_processor, model.config)
    for i in range(3):
        sample = dataset[i]
        source = sample["images"][0]
        # Source: ViT+merger at the reference size, 2 x 64 px -> 8 x 8 tokens.
        expected = _encode(model, image_processor, source, (128, 128))
        torch.testing.assert_close(sample["source_embeds"], expected, rtol=1e-5, atol=1e-5)
        assert (sample["source_grid"], sample["target_grid"]) == ((8, 8), (4, 4))
        # Target: one-pass teacher-forced read-out == the canonical inference prompt for this instruction.
        instruction = sample["messages"][0]["content"].removeprefix("<image> ")
        inputs = processor.image_prompt_inputs(instruction, [source], task="edit")
        expected = model.predict_image_embeds(inputs["input_ids"], inputs["attention_mask"],
                                              inputs["pixel_values"], inputs["image_grid_thw"])[0]
        torch.testing.assert_close(sample["target_embeds"], expected, rtol=1e-4, atol=1e-5)


def test_resume_after_a_crash_gives_the_same_files(parts, data, tmp_path, monkeypatch):
    full = prepare_embeds(data[0], MODEL, "generate", tmp_path / "full", batch_size=2, parts=parts)
    out = tmp_path / "crashed"
    calls = {"n": 0}
    real_save = prepare_module.save_embeds

    def crash_on_third_file(path, embeds):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash in the second batch")
        real_save(path, embeds)

    monkeypatch.setattr(prepare_module, "save_embeds", crash_on_third_file)
    with pytest.raises(KeyboardInterrupt):
        prepare_embeds(data[0], MODEL, "generate", out, batch_size=2, parts=parts)
    jsonl = Path(full["out"].replace(str(tmp_path / "full"), str(out)))
    assert len(jsonl.read_text().splitlines()) == 2  # only the complete first batch was appended
    with open(jsonl, "ab") as f:
        f.write(b'{"id": "half-writ')  # and a torn line, as a kill during the append would leave
    monkeypatch.setattr(prepare_module, "save_embeds", real_save)
    resumed = prepare_embeds(data[0], MODEL, "generate", out, batch_size=2, parts=parts)
    assert (resumed["written"], resumed["already_done"]) == (3, 2)
    assert jsonl.read_text() == Path(full["out"]).read_text()
    for name in sorted(p.name for p in (tmp_path / "full" / "embeds").iterdir()):
        reference = load_embeds(tmp_path / "full" / "embeds" / name)
        assert torch.equal(load_embeds(out / "embeds" / name), reference)
    assert not [p for p in (out / "embeds").iterdir() if p.name.startswith(".")]  # no temp files left
    again = prepare_embeds(data[0], MODEL, "generate", out, batch_size=2)  # nothing to do: no model is loaded
    assert (again["written"], again["already_done"]) == (0, 5)


def test_bad_records_stop_the_run_before_the_model_loads_or_are_counted(data, tmp_path, parts):
    lines = data[1].read_text().splitlines()
    first = json.loads(lines[0])
    missing = json.dumps({**first, "images": ["images/nope.png", first["images"][1]], "id": "missing"})
    gen_only = json.dumps({"id": "gen-only", "images": [first["images"][1]],
                           "messages": [{"role": "user", "content": "draw"},
                                        {"role": "assistant", "content": "<image>"}]})

    def write(name, rows):
        path = data[1].parent / name
        path.write_text("\n".join(rows) + "\n")
        return path

    # Strict runs fail on the first bad record, before any model is loaded ("no-such-model").
    cases = [("m1.jsonl", [*lines, missing], "m1.jsonl:4: image_missing"),
             ("m2.jsonl", [*lines, lines[1]], "m2.jsonl:4: duplicate_id"),
             ("m3.jsonl", [lines[0], gen_only], "m3.jsonl:2: task_mismatch")]
    for name, rows, message in cases:
        with pytest.raises(BadRecordError, match=message):
            prepare_embeds(write(name, rows), "no-such-model", "edit", tmp_path / name)
    summary = prepare_embeds(write("all.jsonl", [*lines, missing, lines[1], gen_only]), MODEL, "edit",
                             tmp_path / "all", skip_bad=True, parts=parts)
    assert summary["written"] == 3
    assert summary["bad"] == {"image_missing": 1, "duplicate_id": 1, "task_mismatch": 1}


def test_settings_are_checked_on_resume(parts, data, tmp_path):
    prepare_embeds(data[0], MODEL, "generate", tmp_path, parts=parts)
    with pytest.raises(ValueError, match="was prepared with"):
        prepare_embeds(data[0], "other-model", "generate", tmp_path, parts=parts)
    with pytest.raises(ValueError, match="task must be one of"):
        prepare_embeds(data[0], MODEL, "both", tmp_path, parts=parts)


def test_file_stem_and_done_ids(tmp_path):
    assert file_stem("EliGen_110152") == "EliGen_110152"
    assert file_stem("a/b c") != file_stem("a_b_c") and "/" not in file_stem("a/b c")
    assert not file_stem("../x").startswith(".") and file_stem("") != ""
    path = tmp_path / "o.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "c", "emb')
    assert read_done_ids(path) == {"a", "b"} and path.read_bytes() == b'{"id": "a"}\n{"id": "b"}\n'
    path.write_bytes(b'{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(ValueError, match="line 2 is not an output record"):
        read_done_ids(path)


def test_official_decoder_datasets_prepare_with_repo_root(parts, tmp_path, official_examples):
    root = official_examples / "assets/example_datasets"
    gen = prepare_embeds(root / "gen_decoder_dataset.jsonl", MODEL, "generate", tmp_path / "g",
                         image_root=official_examples, parts=parts)
    edit = prepare_embeds(root / "edit_decoder_dataset.jsonl", MODEL, "edit", tmp_path / "e",
                          image_root=official_examples, parts=parts)
    assert gen["written"] == 2 and edit["written"] == 2
    sample = EditEmbedDataset(edit["out"])[1]  # the Chinese instruction
    assert sample["id"].startswith("zh_") and sample["target_embeds"].shape == (16, 64)
    assert sample["source_image"].size == (1024, 1024)
    assert GenEmbedDataset(gen["out"])[0]["image_embeds"].shape == (16, 64)


def test_cli_on_a_saved_model_folder_matches_the_in_memory_model(parts, data, tmp_path, capsys):
    from nexusgen.cli import main
    from nexusgen.loading.autoregressive import save_autoregressive

    save_autoregressive(tmp_path / "model" / "autoregressive", *parts)
    argv = ["prepare-embeds", "--data", str(data[1]), "--model", str(tmp_path / "model"), "--kind", "edit",
            "--batch-size", "2"]
    assert main([*argv, "--out", str(tmp_path / "cli")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["written"], summary["bad"]) == (3, {})
    prepare_embeds(data[1], MODEL, "edit", tmp_path / "memory", batch_size=2, parts=parts)
    names = sorted(p.name for p in (tmp_path / "memory" / "embeds").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "cli" / "embeds").iterdir()) and len(names) == 6
    for name in names:  # the saved and reloaded folder computes the same embeddings
        torch.testing.assert_close(load_embeds(tmp_path / "cli" / "embeds" / name),
                                   load_embeds(tmp_path / "memory" / "embeds" / name), rtol=1e-6, atol=1e-6)
    assert main([*argv[:2], str(tmp_path / "none.jsonl"), *argv[3:], "--out", str(tmp_path / "x")]) == 2
    assert "--data" in (err := capsys.readouterr().err) and "none.jsonl: no such file" in err


def test_cli_names_the_image_root_for_official_files(tmp_path, capsys, official_examples):
    from nexusgen.cli import main

    data = official_examples / "assets/example_datasets/gen_decoder_dataset.jsonl"
    code = main(["prepare-embeds", "--data", str(data), "--model", "tiny", "--kind", "gen",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "gen_decoder_dataset.jsonl:1: image_missing" in err and "--image-root" in err
