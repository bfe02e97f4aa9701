"""ShapesWorld training data: official message format, determinism, the held-out split."""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from nexusgen.worlds.shapes import HELD_OUT_COMBOS, detect, make_sample, write_dataset
from nexusgen.worlds.shapes.dataset import UND_TYPES, SampleConfig, iter_samples, stream_rng


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_write_dataset_is_deterministic_per_seed(tmp_path):
    a = write_dataset(tmp_path / "a", 24, seed=3, image_size=32)
    b = write_dataset(tmp_path / "b", 24, seed=3, image_size=32)
    c = write_dataset(tmp_path / "c", 24, seed=4, image_size=32)
    assert _digest(a.parent) == _digest(b.parent)
    assert a.read_text() != c.read_text()
    assert not list(a.parent.glob(".*tmp*"))  # atomic writes leave no temporary files


def test_records_follow_the_official_message_format(tmp_path):
    path = write_dataset(tmp_path, 30, seed=0, image_size=64, zh_fraction=0.5)
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 30
    seen = set()
    for r in records:
        assert {"id", "source", "images", "messages"} <= set(r)
        user, assistant = r["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        placeholders = user["content"].count("<image>") + assistant["content"].count("<image>")
        assert placeholders == len(r["images"])
        assert all((tmp_path / p).is_file() for p in r["images"])
        task, lang = r["meta"]["task"], r["meta"]["lang"]
        seen.add((task, lang))
        if task == "generate":
            prefix = {"en": "Generate an image according to the following description: ",
                      "zh": "根据以下描述生成一张图像："}[lang]
            assert user["content"].startswith(prefix)
            assert assistant["content"] == {"en": "Here is an image based on the description: <image>",
                                            "zh": "这是根据您的描述生成的图像：<image>"}[lang]
        elif task == "edit":
            assert user["content"].startswith("<image> ") and len(r["images"]) == 2
            assert assistant["content"] == {"en": "Here is the image: <image>",
                                            "zh": "以下为编辑后的图像：<image>"}[lang]
        else:
            assert user["content"].startswith("<image>\n") and "<image>" not in assistant["content"]
    assert {t for t, _ in seen} == {"understand", "generate", "edit"}
    assert {lang for _, lang in seen} == {"en", "zh"}


def test_same_wrappers_as_the_official_examples(official_examples):
    path = official_examples / "assets/example_datasets/llm_dataset.jsonl"
    official = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    ours = {(s.task, s.lang): s for s in iter_samples(config=SampleConfig(zh_fraction=0.5), stop=40)}
    compared = []
    for rec in official:
        user, assistant = rec["messages"][0]["content"], rec["messages"][1]["content"]
        lang = "zh" if rec["id"].startswith("zh_") else "en"
        if len(rec["images"]) == 2:  # an edit: source and target
            task = "edit"
            assert ours[(task, lang)].messages[0]["content"][:len("<image> ")] == user[:len("<image> ")]
        elif "<image>" in assistant:  # a generation: the target is the assistant's image
            task = "generate"
            prefix = user[:user.index(":") + 1] if lang == "en" else user[:user.index("：") + 1]
            assert ours[(task, lang)].messages[0]["content"].startswith(prefix)
        else:
            continue
        assert ours[(task, lang)].messages[1]["content"] == assistant
        compared.append((task, lang))
    assert sorted(compared) == [("edit", "en"), ("edit", "zh"), ("generate", "en"), ("generate", "zh")]


def test_make_sample_is_random_access_and_streams_are_disjoint():
    config = SampleConfig(image_size=32)
    streamed = list(iter_samples(seed=2, config=config, start=17, stop=18))[0]
    assert make_sample(17, seed=2, config=config).messages == streamed.messages
    a = stream_rng("train", 5, 0).random(4)
    assert not np.allclose(a, stream_rng("test", 5, 0).random(4))
    assert not np.allclose(a, stream_rng("eval", 5, 0).random(4))


def test_train_split_never_shows_held_out_pairs():
    config = SampleConfig(image_size=64, tasks=("generate", "edit"))
    for sample in iter_samples(seed=0, config=config, stop=150):
        for image in sample.images:
            assert not {(d.color, d.shape) for d in detect(image)} & HELD_OUT_COMBOS, sample.id
    test_config = SampleConfig(image_size=64, split="test", tasks=("understand",), compositional_fraction=1.0)
    shown = [bool({(d.color, d.shape) for d in detect(s.images[0])} & HELD_OUT_COMBOS)
             for s in iter_samples(seed=0, config=test_config, stop=20)]
    assert all(shown)


def test_und_types_weight_the_question_mix_and_leave_the_default_stream_alone():
    only = SampleConfig(image_size=32, tasks=("understand",), und_types=["relation"])  # a JSON list is fine
    assert only.und_types == ("relation",)
    assert {make_sample(i, config=only).type for i in range(12)} == {"relation"}
    where = SampleConfig(image_size=32, tasks=("understand",), und_types=["where"])  # a training-only type
    assert {make_sample(i, config=where).type for i in range(4)} == {"where"}
    with pytest.raises(ValueError, match="und_types"):
        SampleConfig(und_types=["why"])
    weighted = SampleConfig(image_size=32, tasks=("understand",), und_types=("count", "count", "count", "caption"))
    kinds = [make_sample(i, config=weighted).type for i in range(200)]
    assert set(kinds) == {"count", "caption"} and 0.6 < kinds.count("count") / len(kinds) < 0.9
    # The default draws exactly as before the field existed (the streams of trained models stay valid).
    default = SampleConfig(image_size=32, tasks=("understand",))
    explicit = SampleConfig(image_size=32, tasks=("understand",), und_types=UND_TYPES)
    assert [make_sample(i, config=default).messages for i in range(20)] == \
        [make_sample(i, config=explicit).messages for i in range(20)]
    # Golden: the question types of the first 16 samples, recorded before `und_types` was added.
    assert "".join(make_sample(i, config=default).type[:2] for i in range(16)) == "coshcabibicabicococococococoshsh"


def test_reasoned_answers_replace_only_relation_answers_with_the_ordered_comparison():
    fields = dict(image_size=32, tasks=("understand",), und_types=("relation", "count"))
    plain = [make_sample(i, config=SampleConfig(**fields)) for i in range(16)]
    ordered = [make_sample(i, config=SampleConfig(**fields, reasoned_answers=True, reasoning_steps="ordered"))
               for i in range(16)]
    assert {p.type for p in plain} == {"relation", "count"}
    for p, o in zip(plain, ordered):
        said = o.messages[1]["content"]
        assert p.messages[0] == o.messages[0] and p.type == o.type  # same question, same stream
        assert said == p.messages[1]["content"] if p.type == "count" else said.rstrip(".。").endswith(
            p.messages[1]["content"]) and re.search(r"(column|row|列|行)", said)
    default_form = [make_sample(i, config=SampleConfig(**fields, reasoned_answers=True)) for i in range(16)]
    assert [s.messages for s in default_form] == [s.messages for s in ordered]


@pytest.mark.parametrize("form", ["all", "last", "listed"])
def test_removed_answer_forms_are_refused_by_name(form):
    """The reasoned answers that did not help (every place first, the two places, a listing) are gone."""
    with pytest.raises(ValueError, match=f"reasoning_steps '{form}' .* was removed"):
        SampleConfig(reasoned_answers=True, reasoning_steps=form)


def test_removed_sample_options_are_ignored_off_and_refused_on():
    assert SampleConfig.from_options(question_first=False, reasoned_types=None) == SampleConfig()
    with pytest.raises(ValueError, match="question_first .* was removed"):
        SampleConfig.from_options(question_first=True)
    with pytest.raises(ValueError, match="reasoned_types .* was removed"):
        SampleConfig.from_options(reasoned_types=["count"])
    with pytest.raises(ValueError, match="unknown ShapesWorld sample options \\['colour_fraction'\\]"):
        SampleConfig.from_options(colour_fraction=0.5)


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="reasoning_steps"):
        SampleConfig(reasoning_steps="first")
    with pytest.raises(ValueError, match="held-out"):
        SampleConfig(split="train", compositional_fraction=0.1)
    with pytest.raises(ValueError, match="tasks"):
        SampleConfig(tasks=("draw",))
    for bad in ((), ("riddle",)):
        with pytest.raises(ValueError, match="und_types"):
            SampleConfig(und_types=bad)
    with pytest.raises(ValueError):
        write_dataset("/tmp/never", -1)


def test_files_load_with_the_message_reader(tmp_path):
    from nexusgen.data.messages import MessageDataset

    path = write_dataset(tmp_path, 12, seed=1, image_size=32, split="test", compositional_fraction=0.5)
    dataset = MessageDataset(path)
    assert len(dataset) == 12
    assert dataset[0]["images"][0].size == (32, 32)
