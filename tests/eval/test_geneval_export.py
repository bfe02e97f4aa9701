"""`nexusgen eval geneval-export` writes GenEval's folder layout."""

import json

import pytest
from PIL import Image

from nexusgen.cli import main
from nexusgen.eval.geneval import export, read_prompts
from nexusgen.eval.oracle import BlankModel

PROMPTS = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
    {"tag": "counting", "include": [{"class": "clock", "count": 2}],
     "exclude": [{"class": "clock", "count": 3}], "prompt": "a photo of two clocks"},
    {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}],
     "prompt": "a photo of a red car"},
]


class SeedRecorder(BlankModel):
    """Blank images, remembering the seeds it was called with."""

    def __init__(self):
        super().__init__(image_size=32)
        self.calls = []

    def generate(self, prompts, seed=0, **size):
        self.calls.append((list(prompts), seed))
        return super().generate(prompts, seed, **size)


def _write_prompts(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_layout(tmp_path):
    prompts = _write_prompts(tmp_path / "evaluation_metadata.jsonl", PROMPTS)
    out = tmp_path / "out"
    assert main(["eval", "geneval-export", "--prompts", str(prompts), "--out", str(out), "--model", "blank",
                 "--images-per-prompt", "2"]) == 0
    folders = sorted(p.name for p in out.iterdir())
    assert folders == ["00000", "00001", "00002"]
    for i, folder in enumerate(folders):
        meta = (out / folder / "metadata.jsonl").read_text().splitlines()
        assert len(meta) == 1 and json.loads(meta[0]) == PROMPTS[i]  # the prompt's line, unchanged
        samples = sorted(p.name for p in (out / folder / "samples").iterdir())
        assert samples == ["0000.png", "0001.png"]
        assert Image.open(out / folder / "samples" / "0000.png").mode == "RGB"


def test_seeds_differ_per_sample_and_resume_skips_complete_prompts(tmp_path):
    model = SeedRecorder()
    summary = export(model, PROMPTS, tmp_path, images_per_prompt=3, seed=10, batch_size=2)
    assert summary == {"items": 3, "done": 3, "images": 9, "skipped": 0, "failed": 0, "out": str(tmp_path)}
    # sample k of every prompt uses seed 10 + k, whatever batch the prompt is in
    assert sorted({s for _, seeds in model.calls for s in seeds}) == [10, 11, 12]
    assert all(len(set(seeds)) == 1 and len(seeds) == len(prompts) for prompts, seeds in model.calls)
    again = SeedRecorder()
    assert export(again, PROMPTS, tmp_path, images_per_prompt=3, seed=10)["skipped"] == 3
    assert again.calls == []


def test_bad_prompt_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=":2: missing or empty"):
        read_prompts(_write_prompts(tmp_path / "a.jsonl", [PROMPTS[0], {"tag": "x", "prompt": ""}]))
    with pytest.raises(ValueError, match="missing \"tag\""):
        read_prompts(_write_prompts(tmp_path / "b.jsonl", [{"prompt": "a cat"}]))
    (tmp_path / "c.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="not JSON"):
        read_prompts(tmp_path / "c.jsonl")
    (tmp_path / "d.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no entries"):
        read_prompts(tmp_path / "d.jsonl")
    assert main(["eval", "geneval-export", "--prompts", str(tmp_path / "missing.jsonl"),
                 "--out", str(tmp_path / "o"), "--model", "blank"]) == 2
