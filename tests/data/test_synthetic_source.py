"""SyntheticSource: deterministic message-format samples whose pixels match their captions."""

import numpy as np
import pytest

from nexusgen.data.messages import MessageDataset
from nexusgen.data.synthetic import COLORS, SyntheticSource, write_jsonl


def test_samples_are_deterministic_and_pixels_match_the_text():
    source = SyntheticSource(12, seed=7, image_size=24)
    assert [s["task"] for s in (source[0], source[1], source[2], source[3])] == [
        "understand", "generate", "edit", "understand"]
    for i in range(len(source)):
        a, b = source[i], source[i]
        assert a["messages"] == b["messages"] and a["box"] == b["box"]
        assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a["images"], b["images"]))
        x0, y0, x1, y1 = a["box"]
        pixels = np.asarray(a["images"][0])
        assert pixels.shape == (24, 24, 3)
        assert (pixels[y0:y1 + 1, x0:x1 + 1] == COLORS[a["color"]]).all()
        outside = np.ones((24, 24), bool)
        outside[y0:y1 + 1, x0:x1 + 1] = False
        assert (pixels[outside] == 255).all()
        text = " ".join(m["content"] for m in a["messages"])
        if a["task"] == "edit":
            target = np.asarray(a["images"][1])
            assert (target[y0:y1 + 1, x0:x1 + 1] == COLORS[a["new_color"]]).all()
            assert (target[outside] == 255).all() and a["new_color"] in text and a["new_color"] != a["color"]
        else:
            assert a["color"] in text
    assert SyntheticSource(12, seed=8, image_size=24)[0]["box"] != source[0]["box"] or \
        SyntheticSource(12, seed=8, image_size=24)[0]["color"] != source[0]["color"]


def test_write_jsonl_round_trips_through_the_reader(tmp_path):
    source = SyntheticSource(5, seed=0, image_size=16, tasks=("understand", "generate", "edit", "text"))
    dataset = MessageDataset(write_jsonl(source, tmp_path / "syn.jsonl"))
    assert len(dataset) == 5
    for i in range(5):
        original, read = source[i], dataset[i]
        assert read["messages"] == original["messages"] and read["task"] == original["task"]
        assert read["id"] == original["id"] and read["box"] == original["box"]
        assert [np.asarray(im).tolist() for im in read["images"]] == [
            np.asarray(im).tolist() for im in original["images"]]


def test_bad_arguments():
    with pytest.raises(ValueError, match="subset"):
        SyntheticSource(3, tasks=("paint",))
    with pytest.raises(IndexError):
        SyntheticSource(3)[3]
