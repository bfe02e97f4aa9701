"""nexusgen.files: atomic files and folders, the JSON rule, provenance."""

import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file

from nexusgen import files


def test_atomic_folder_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with files.atomic_folder(tmp_path / "final") as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_replaces_an_existing_folder_only_when_complete(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with files.atomic_folder(target) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (target / "old.txt").read_text() == "old"  # still the old folder while writing
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary or old folder left


def test_save_tensors_writes_tied_weights_as_copies(tmp_path):
    weight = torch.randn(3, 4)
    files.save_tensors({"a": weight, "b": weight}, tmp_path / "t.safetensors")
    loaded = load_file(str(tmp_path / "t.safetensors"))
    assert torch.equal(loaded["a"], weight) and torch.equal(loaded["b"], weight)
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


def test_write_json_refuses_nan_and_json_safe_writes_it_as_null(tmp_path):
    with pytest.raises(ValueError):
        files.write_json({"loss": math.nan}, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()
    files.write_json(files.json_safe({"loss": math.nan, "rows": [(1.0, math.inf)], "zh": "红色"}),
                     tmp_path / "ok.json")
    text = (tmp_path / "ok.json").read_text(encoding="utf-8")
    assert json.loads(text) == {"loss": None, "rows": [[1.0, None]], "zh": "红色"}
    assert "红色" in text and text.endswith("\n")


def test_jsonl_round_trip(tmp_path):
    rows = [{"index": 0, "answer": "三"}, {"index": 1, "answer": "two"}]
    files.write_jsonl(rows, tmp_path / "a.jsonl")
    assert files.read_jsonl(tmp_path / "a.jsonl") == rows
    assert len((tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()) == 2


def test_git_sha_is_a_commit_or_unknown():
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", files.git_sha())
