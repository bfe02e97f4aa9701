"""Decoder embedding datasets: official formats, .pt (weights only) and .safetensors, clear failures."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from nexusgen.data.embeds import EditEmbedDataset, GenEmbedDataset, load_embeds, save_embeds
from nexusgen.data.messages import BadRecordError, InvalidRecord

GEN_MESSAGES = [{"role": "user", "content": "Generate an image according to the following description: x"},
                {"role": "assistant", "content": "Here is an image based on the description: <image>"}]
EDIT_MESSAGES = [{"role": "user", "content": "<image> make it blue"},
                 {"role": "assistant", "content": "Here is the image: <image>"}]


class _Marker:
    """An object whose unpickling would run code (touch a file): weights-only loading must refuse it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _write(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def folder(tmp_path):
    Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / "src.png")
    Image.new("RGB", (8, 8), (0, 0, 200)).save(tmp_path / "dst.png")
    return tmp_path


@pytest.mark.parametrize("cls, name, key", [
    (GenEmbedDataset, "embeds_gen/gen_decoder_embeds_dataset.jsonl", "embed_path"),
    (EditEmbedDataset, "embeds_edit/edit_decoder_embeds_dataset.jsonl", "embed_source"),
])
def test_official_embed_files_are_reported_missing(cls, name, key, official_examples):
    """Upstream's embedding datasets name `.pt` files that upstream does not ship."""
    path = official_examples / "assets/example_datasets" / name
    with pytest.raises(BadRecordError) as info:
        cls(path, image_root=official_examples)
    assert (info.value.line, info.value.reason) == (1, "embed_missing")
    assert f"{key} file 'assets/example_datasets/" in str(info.value) and ".pt' not found" in str(info.value)
    with pytest.raises(ValueError, match=r"no valid record .*'embed_missing': 2"):
        cls(path, image_root=official_examples, skip_bad=True)


def test_gen_dataset_reads_upstream_pt_and_our_safetensors(folder):
    pt = torch.randn(1, 81, 16)
    torch.save(pt, folder / "a.pt")
    ours = torch.randn(81, 16)
    save_embeds(folder / "b.safetensors", ours)
    records = [{"id": "a", "images": ["dst.png"], "messages": GEN_MESSAGES, "embed_path": "a.pt"},
               {"id": "b", "images": ["dst.png"], "messages": GEN_MESSAGES, "embed_path": "b.safetensors"}]
    ds = GenEmbedDataset(_write(folder / "g.jsonl", records), num_tokens=81, embed_dim=16)
    a, b = ds[0], ds[1]
    assert a["image_embeds"].shape == (81, 16) and torch.equal(a["image_embeds"], pt[0])
    assert torch.equal(b["image_embeds"], ours)
    assert a["target_image"].getpixel((0, 0)) == (0, 0, 200) and a["task"] == "generate"
    assert a["embed_path"] == "a.pt"  # the record's keys are carried along
    assert a["image_grid"] == (9, 9) and b["image_grid"] == (9, 9)  # upstream files: square grid


@pytest.mark.parametrize("tokens, grid, expected", [
    (16, [2, 8], (2, 8)), (16, None, (4, 4)), (12, None, "embed_shape"), (16, [4, 5], "embed_shape"),
    (16, [4, "4"], "embed_shape"),
])
def test_token_grid_from_record_or_square(folder, tokens, grid, expected):
    save_embeds(folder / "x.safetensors", torch.randn(tokens, 8))
    rec = {"images": ["dst.png"], "messages": GEN_MESSAGES, "embed_path": "x.safetensors",
           **({"embed_grid": grid} if grid is not None else {})}
    ds = GenEmbedDataset(_write(folder / "g.jsonl", [rec]))
    if isinstance(expected, str):
        with pytest.raises(BadRecordError, match=rf":1: {expected}: "):
            ds[0]
    else:
        assert ds[0]["image_grid"] == expected


def test_edit_dataset_returns_source_and_target(folder):
    src, tgt = torch.randn(324, 16), torch.randn(1, 81, 16)
    torch.save(src, folder / "e_0.pt")
    torch.save(tgt, folder / "e_1.pt")
    rec = {"id": "e", "images": ["src.png", "dst.png"], "messages": EDIT_MESSAGES,
           "embed_source": "e_0.pt", "embed_target": "e_1.pt"}
    sample = EditEmbedDataset(_write(folder / "e.jsonl", [rec]), num_tokens=81)[0]
    assert torch.equal(sample["source_embeds"], src) and torch.equal(sample["target_embeds"], tgt[0])
    assert sample["source_image"].getpixel((0, 0)) == (200, 0, 0)
    assert sample["target_image"].getpixel((0, 0)) == (0, 0, 200)
    assert (sample["source_grid"], sample["target_grid"]) == ((18, 18), (9, 9))


def test_pickle_that_needs_code_is_refused_and_not_run(folder):
    marker = folder / "code_ran"
    torch.save({"x": _Marker(str(marker))}, folder / "evil.pt")
    rec = {"id": "x", "images": ["dst.png"], "messages": GEN_MESSAGES, "embed_path": "evil.pt"}
    ds = GenEmbedDataset(_write(folder / "g.jsonl", [rec]))
    with pytest.raises(BadRecordError, match=r":1: embed_unsafe: .*needs code to load; refused"):
        ds[0]
    assert not marker.exists()


@pytest.mark.parametrize("tensors, name, reason", [
    ({"embeds": torch.randn(2, 81, 16)}, "s.safetensors", "embed_shape"),
    ({"embeds": torch.randn(80, 16)}, "s.safetensors", "embed_shape"),  # num_tokens=81 below
    ({"embeds": torch.zeros(81, 16, dtype=torch.int64)}, "s.safetensors", "embed_shape"),
    ({"other": torch.randn(81, 16)}, "s.safetensors", "embed_unreadable"),
    (None, "s.safetensors", "embed_unreadable"),
    (None, "s.pt", "embed_unreadable"),
    ({"embeds": torch.randn(81, 16)}, "s.npy", "embed_unreadable"),
])
def test_bad_embedding_files(folder, tensors, name, reason):
    path = folder / name
    if tensors is None:
        path.write_bytes(b"garbage bytes, not a tensor file")
    else:
        save_file(tensors, path)
    rec = {"id": "x", "images": ["dst.png"], "messages": GEN_MESSAGES, "embed_path": name}
    ds = GenEmbedDataset(_write(folder / "g.jsonl", [rec]), num_tokens=81)
    with pytest.raises(BadRecordError, match=rf":1: {reason}: "):
        ds[0]


@pytest.mark.parametrize("record, reason", [
    ({"images": ["dst.png"], "messages": GEN_MESSAGES}, "missing_key"),
    ({"images": ["dst.png"], "messages": GEN_MESSAGES, "embed_path": 3}, "wrong_type"),
    ({"images": ["src.png", "dst.png"], "messages": EDIT_MESSAGES, "embed_source": "nope_0.pt",
      "embed_target": "nope_1.pt"}, "missing_key"),  # an edit record in a gen dataset has no embed_path
])
def test_bad_gen_records(folder, record, reason):
    with pytest.raises(BadRecordError, match=rf":1: {reason}: "):
        GenEmbedDataset(_write(folder / "g.jsonl", [record]))


def test_edit_dataset_needs_two_images(folder):
    torch.save(torch.randn(4, 16), folder / "e.pt")
    rec = {"images": ["dst.png"], "messages": GEN_MESSAGES, "embed_source": "e.pt", "embed_target": "e.pt"}
    with pytest.raises(BadRecordError, match=r":1: image_count: EditEmbedDataset needs at least 2"):
        EditEmbedDataset(_write(folder / "e.jsonl", [rec]))


def test_save_embeds_is_atomic_and_checked(folder):
    save_embeds(folder / "x.safetensors", torch.randn(1, 5, 3))
    assert load_embeds(folder / "x.safetensors").shape == (5, 3)
    assert sorted(p.name for p in folder.iterdir()) == ["dst.png", "src.png", "x.safetensors"]  # no temp left
    with pytest.raises(ValueError, match="written as .safetensors"):
        save_embeds(folder / "x.pt", torch.randn(5, 3))
    with pytest.raises(InvalidRecord, match="embed_shape"):
        save_embeds(folder / "y.safetensors", torch.randn(5))
    assert not (folder / "y.safetensors").exists()
