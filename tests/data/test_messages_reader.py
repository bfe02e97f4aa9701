"""The message-format JSONL reader: official example files, validation of every failure kind, laziness."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nexusgen.data.messages import BadRecordError, MessageDataset


def _msgs(user, assistant="ok"):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _write(path: Path, records) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path):
    Image.new("RGB", (20, 10), (10, 200, 30)).save(tmp_path / "a.png")
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / "b.png")
    return tmp_path


GOOD = {"id": "g", "images": ["a.png"], "messages": _msgs("<image>\nWhat colour?", "green")}


# -- official files -----------------------------------------------------------------------------------


def test_official_llm_dataset_reads_with_repo_root(official_examples):
    ds = MessageDataset(official_examples / "assets/example_datasets/llm_dataset.jsonl", image_root=official_examples)
    samples = [ds[i] for i in range(len(ds))]
    assert [s["task"] for s in samples] == ["understand", "generate", "generate", "edit", "edit"]
    assert [len(s["images"]) for s in samples] == [1, 1, 1, 2, 2]
    assert samples[0]["id"] == "20931" and samples[0]["source"] == "printed_pages_10k.json"
    assert samples[0]["images"][0].size == (770, 731) and samples[3]["images"][1].size == (1024, 1024)
    assert all(im.mode == "RGB" for s in samples for im in s["images"])
    assert samples[4]["messages"][0]["content"] == "<image> 把蓝色茶壶换成插着黄色郁金香的玻璃花瓶。"
    assert samples[2]["messages"][1] == {"role": "assistant",
                                         "content": "这是根据您的描述生成的图像：<image>"}


def test_official_paths_are_repo_root_relative_and_the_error_says_so(official_examples):
    path = official_examples / "assets/example_datasets/gen_decoder_dataset.jsonl"
    with pytest.raises(BadRecordError) as info:
        MessageDataset(path)
    err = info.value
    assert (err.path, err.line, err.reason) == (str(path), 1, "image_missing")
    assert f"pass image_root={str(official_examples)!r}" in str(err)
    assert str(err).startswith(f"{path}:1: image_missing:")


# -- validation ---------------------------------------------------------------------------------------

BAD_CASES = {
    "bad_json": '{"id": "x", "messages": [',
    "not_object": "[1, 2]",
    "missing_messages": {"id": "x", "images": []},
    "messages_not_list": {"messages": "hi"},
    "message_not_object": {"messages": ["hi"]},
    "no_content": {"messages": [{"role": "user"}]},
    "content_not_str": {"messages": [{"role": "user", "content": ["hi"]},
                                     {"role": "assistant", "content": "a"}]},
    "unknown_role": {"messages": [{"role": "robot", "content": "hi"}]},
    "empty_content": {"messages": _msgs("  \n ")},
    "no_assistant": {"messages": [{"role": "user", "content": "hi"}]},
    "id_wrong_type": {"id": [1], "messages": _msgs("hi")},
    "images_not_list": {"images": "a.png", "messages": _msgs("<image> hi")},
    "too_many_tags": {"images": ["a.png"], "messages": _msgs("<image> <image> hi")},
    "too_few_tags": {"images": ["a.png", "b.png"], "messages": _msgs("<image> hi")},
    "image_in_system": {"images": ["a.png"],
                        "messages": [{"role": "system", "content": "<image>"}, *_msgs("q")]},
    "image_missing": {"images": ["nope.png"], "messages": _msgs("<image> hi")},
    "image_unreadable": {"images": ["notes.png"], "messages": _msgs("<image> hi")},
    "too_many_pixels": {"images": ["big.png"], "messages": _msgs("<image> hi")},
    "task_mismatch": {"task": "generate", "images": ["a.png"], "messages": _msgs("<image> hi")},
}
EXPECTED_REASON = {
    "not_object": "bad_json", "missing_messages": "missing_key", "messages_not_list": "wrong_type",
    "message_not_object": "wrong_type", "no_content": "missing_key", "content_not_str": "wrong_type",
    "id_wrong_type": "wrong_type", "images_not_list": "wrong_type", "too_many_tags": "image_count",
    "too_few_tags": "image_count",
}


def _bad_folder(folder):
    (folder / "notes.png").write_text("not an image")
    Image.new("RGB", (300, 300)).save(folder / "big.png")
    return folder


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_each_bad_record_fails_with_file_line_and_reason(folder, case):
    path = _write(_bad_folder(folder) / "d.jsonl", [GOOD, BAD_CASES[case]])
    with pytest.raises(BadRecordError) as info:
        MessageDataset(path, max_image_pixels=256 * 256)
    reason = EXPECTED_REASON.get(case, case)
    assert (info.value.line, info.value.reason) == (2, reason)
    assert str(info.value).startswith(f"{path}:2: {reason}: ")
    assert isinstance(info.value, ValueError)


def test_skip_bad_counts_every_reason_and_keeps_good_records(folder):
    records = [GOOD, *(BAD_CASES[c] for c in sorted(BAD_CASES)), {**GOOD, "id": "g2"}, ""]
    path = _write(_bad_folder(folder) / "d.jsonl", records)
    ds = MessageDataset(path, skip_bad=True, max_image_pixels=256 * 256)
    assert len(ds) == 2 and [ds[0]["id"], ds[1]["id"]] == ["g", "g2"]
    assert ds.bad_counts == Counter(EXPECTED_REASON.get(c, c) for c in BAD_CASES)
    assert len(ds.bad_messages) == len(BAD_CASES)
    assert ds.bad_messages[0].startswith(f"{path}:2: ")
    assert ds.line_number(1) == len(BAD_CASES) + 2


def test_corrupt_image_is_found_on_access_and_skip_bad_substitutes_deterministically(folder):
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "full.png")
    data = (folder / "full.png").read_bytes()
    (folder / "trunc.png").write_bytes(data[: len(data) // 2])  # header intact, pixel data cut
    corrupt = {"id": "c", "images": ["trunc.png"], "messages": _msgs("<image> q")}
    records = [GOOD, corrupt, {**GOOD, "id": "g3"}]
    path = _write(folder / "d.jsonl", records)
    strict = MessageDataset(path)
    assert len(strict) == 3  # the header check passes; decoding fails
    with pytest.raises(BadRecordError, match=rf"^{path}:2: image_corrupt: "):
        strict[1]
    lenient = MessageDataset(path, skip_bad=True)
    assert lenient[1]["id"] == "g3" and lenient[1]["id"] == "g3"
    assert lenient.bad_counts == Counter({"image_corrupt": 1})  # counted once, however often it is hit


def test_check_images_false_defers_image_checks_to_access(folder):
    missing = {"id": "m", "images": ["gone.png"], "messages": _msgs("<image>")}
    path = _write(folder / "d.jsonl", [GOOD, missing])
    ds = MessageDataset(path, check_images=False)
    assert len(ds) == 2 and ds[0]["id"] == "g"
    with pytest.raises(BadRecordError, match=r":2: image_missing: "):
        ds[1]


# -- sample contents ----------------------------------------------------------------------------------


def test_sample_dict_tasks_modes_and_extra_keys(folder):
    Image.new("RGBA", (4, 4), (255, 0, 0, 128)).save(folder / "rgba.png")
    Image.new("L", (4, 4), 77).save(folder / "gray.png")
    records = [
        {"id": 7, "source": "s", "extra": {"k": [1]}, "images": ["rgba.png"], "messages": _msgs("<image> q")},
        {"images": ["gray.png"], "messages": _msgs("draw", "here: <image>")},
        {"images": [str(folder / "a.png"), "b.png"], "messages": _msgs("<image> edit", "<image>")},
        {"messages": [{"role": "system", "content": "sys"}, *_msgs("hello", "hi")]},
    ]
    ds = MessageDataset(_write(folder / "d.jsonl", records))
    s0, s1, s2, s3 = (ds[i] for i in range(4))
    assert s0["id"] == "7" and s0["source"] == "s" and s0["extra"] == {"k": [1]}
    red = np.asarray(s0["images"][0]).astype(int)[0, 0]  # half-transparent red, composited onto white
    assert red[0] == 255 and abs(red[1] - 127) <= 1 and abs(red[2] - 127) <= 1
    assert s1["id"] == "d-2" and np.asarray(s1["images"][0])[0, 0].tolist() == [77, 77, 77]
    assert [s["task"] for s in (s0, s1, s2, s3)] == ["understand", "generate", "edit", "text"]
    assert s2["images"][0].size == (20, 10) and s2["images"][1].size == (16, 16)  # absolute + relative
    assert s3["images"] == [] and s3["messages"][0] == {"role": "system", "content": "sys"}
    assert set(s0) == {"id", "source", "extra", "messages", "images", "task"}


def test_index_holds_byte_offsets_bom_and_blank_lines(folder):
    path = folder / "d.jsonl"
    first, second = json.dumps({**GOOD, "id": "é1"}, ensure_ascii=False), json.dumps({**GOOD, "id": "2"})
    body = "\n".join([first, "", second])
    path.write_bytes(b"\xef\xbb\xbf" + body.encode() + b"\n")
    ds = MessageDataset(path, image_root=folder)
    assert [ds[0]["id"], ds[1]["id"], ds[-1]["id"]] == ["é1", "2", "2"]
    assert ds.line_number(1) == 3
    assert ds._offsets.dtype == np.int64 and ds._offsets.tolist()[0] == 3
    with pytest.raises(IndexError):
        ds[2]


def test_missing_file_and_all_bad_are_clear_errors(folder):
    with pytest.raises(FileNotFoundError, match="data file not found"):
        MessageDataset(folder / "none.jsonl")
    path = _write(folder / "d.jsonl", ["{oops"])
    with pytest.raises(ValueError, match=r"no valid record .*'bad_json': 1"):
        MessageDataset(path, skip_bad=True)
