"""DPG-Bench, ImgEdit and GEdit-Bench exports on small files in each benchmark's published format."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from nexusgen.cli import main
from nexusgen.eval import dpg, gedit, imgedit
from nexusgen.eval.oracle import BlankModel

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


class SeedColorModel(BlankModel):
    """Images whose colour encodes the seed (seed % 4), so tiles and seeds can be checked by pixel."""

    def __init__(self):
        super().__init__(image_size=16)
        self.calls = []

    def generate(self, prompts, seed=0, *, height=None, width=None):
        self.calls.append(("generate", list(prompts), seed, height, width))
        size = (width or 16, height or 16)
        return [Image.new("RGB", size, COLORS[s % 4]) for s in seed]

    def edit(self, images, prompts, decoder="editing", seed=0, *, height=None, width=None):
        self.calls.append(("edit", list(prompts), seed, height, width))
        sizes = [(width or im.width, height or im.height) for im in images]
        return [Image.new("RGB", size, COLORS[s % 4]) for size, s in zip(sizes, seed)]


# ---------------------------------------------------------------- DPG-Bench
def _dpg_prompts(folder, items):
    folder.mkdir()
    for item_id, text in items.items():
        (folder / f"{item_id}.txt").write_text(text + "\n")
    return folder


def test_dpg_tiles_four_seeds_in_the_scorers_crop_order(tmp_path):
    prompts = _dpg_prompts(tmp_path / "prompts", {"1": "a red fox in snow", "partiprompts12": "a blue car"})
    model = SeedColorModel()
    summary = dpg.export(model, dpg.read_prompts(prompts), tmp_path / "out", resolution=16, seed=0, batch_size=4)
    assert summary == {"items": 2, "done": 2, "skipped": 0, "failed": 0, "resolution": 16, "out": str(tmp_path / "out")}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["1.png", "partiprompts12.png"]
    grid = Image.open(tmp_path / "out" / "1.png")
    assert grid.size == (32, 32)
    # compute_dpg_bench.py crops (0,0,R,R), (R,0,2R,R), (0,R,R,2R), (R,R,2R,2R) as samples 0..3
    crops = [(0, 0), (16, 0), (0, 16), (16, 16)]
    for k, (x, y) in enumerate(crops):
        tile = np.asarray(grid.crop((x, y, x + 16, y + 16)))
        assert (tile == COLORS[k]).all(), k
    # sample k of every prompt: seed + k, the same for both prompts of the batch
    assert [c[2] for c in model.calls] == [[0, 0], [1, 1], [2, 2], [3, 3]]


def test_dpg_resumes_and_rejects_bad_prompt_files(tmp_path):
    prompts = _dpg_prompts(tmp_path / "prompts", {"1": "a", "2": "b", "3": "c"})
    out = tmp_path / "out"
    dpg.export(SeedColorModel(), dpg.read_prompts(prompts)[:2], out, resolution=16)
    again = SeedColorModel()
    summary = dpg.export(again, dpg.read_prompts(prompts), out, resolution=16)
    assert (summary["done"], summary["skipped"]) == (1, 2)
    assert all(call[1] == ["c"] for call in again.calls)
    (prompts / "4.txt").write_text("  \n")
    with pytest.raises(ValueError, match="4.txt: empty prompt"):
        dpg.read_prompts(prompts)
    (prompts / "4.txt").unlink()
    (prompts / "a.b.txt").write_text("x")
    with pytest.raises(ValueError, match="has a dot"):
        dpg.read_prompts(prompts)
    assert main(["eval", "dpg-export", "--prompts", str(tmp_path / "none"), "--out", str(out), "--model", "blank"]) == 2


def test_dpg_export_on_the_tiny_model_through_the_cli(tmp_path):
    prompts = _dpg_prompts(tmp_path / "prompts", {"7": "a red circle"})
    out = tmp_path / "out"
    args = ["eval", "dpg-export", "--prompts", str(prompts), "--out", str(out), "--model", "tiny", "--resolution", "32"]
    assert main(args) == 0
    first = (out / "7.png").read_bytes()
    assert Image.open(out / "7.png").size == (64, 64)
    (out / "7.png").unlink()
    assert main(args) == 0  # the same seeds give the same file
    assert (out / "7.png").read_bytes() == first


# ---------------------------------------------------------------- ImgEdit
def _imgedit_files(tmp_path):
    root = tmp_path / "original_images"
    (root / "animal").mkdir(parents=True)
    Image.new("RGB", (40, 30), "white").save(root / "animal" / "000342021.jpg")
    Image.new("RGB", (30, 40), "gray").save(root / "animal" / "000047206.jpg")
    edits = {"1082": {"id": "animal/000342021.jpg", "prompt": "Change the shell to smooth.", "edit_type": "adjust"},
             "1068": {"id": "animal/000047206.jpg", "prompt": "Make the fur darker.", "edit_type": "adjust"}}
    path = tmp_path / "basic_edit.json"
    path.write_text(json.dumps(edits))
    return path, root


def test_imgedit_writes_key_png_and_resumes(tmp_path):
    edits, root = _imgedit_files(tmp_path)
    out = tmp_path / "edited_images"
    cases = imgedit.read_cases(edits, root)
    assert [(c.key, c.source.name, c.edit_type) for c in cases] == [("1082", "000342021.jpg", "adjust"),
                                                                    ("1068", "000047206.jpg", "adjust")]
    model = SeedColorModel()
    assert imgedit.export(model, cases, out, seed=2)["done"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["1068.png", "1082.png"]
    assert model.calls[0][2] == [2, 2]
    (out / "1068.png").unlink()
    again = SeedColorModel()
    assert imgedit.export(again, cases, out, seed=2)["skipped"] == 1
    assert again.calls[0][1] == ["Make the fur darker."]


def test_imgedit_bad_files_name_the_case(tmp_path):
    edits, root = _imgedit_files(tmp_path)
    data = json.loads(edits.read_text())
    data["1068"]["id"] = "animal/missing.jpg"
    edits.write_text(json.dumps(data))
    with pytest.raises(FileNotFoundError, match="case '1068': source image not found"):
        imgedit.read_cases(edits, root)
    data["1068"]["id"] = "animal/000047206.jpg"
    del data["1068"]["prompt"]
    edits.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="case '1068': missing or empty \"prompt\""):
        imgedit.read_cases(edits, root)
    edits.write_text("{\n  \"1\": [}")
    with pytest.raises(ValueError, match="basic_edit.json:2: not JSON"):
        imgedit.read_cases(edits, root)


def test_imgedit_cli_on_the_tiny_model(tmp_path):
    edits, root = _imgedit_files(tmp_path)
    out = tmp_path / "edited"
    assert main(["eval", "imgedit-export", "--edits", str(edits), "--images", str(root), "--out", str(out),
                 "--model", "tiny", "--batch-size", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["1068.png", "1082.png"]


# ---------------------------------------------------------------- GEdit-Bench
def _png(size, color="white") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _gedit_parquet(folder, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "data").mkdir(parents=True)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "task_type": [r[0] for r in rows], "key": [r[1] for r in rows], "instruction": [r[2] for r in rows],
        "instruction_language": [r[3] for r in rows],
        "input_image": pa.array([{"bytes": r[4], "path": None} for r in rows], image),
        "input_image_raw": pa.array([{"bytes": r[4], "path": None} for r in rows], image),
        "Intersection_exist": [True for _ in rows]})
    pq.write_table(table, folder / "data" / "train-00000-of-00001.parquet")
    return folder


def test_gedit_edit_size_matches_the_benchmarks_arithmetic():
    # hand-computed with GEdit-Bench's calculate_dimensions(512 * 512, ratio):
    # 4:3 -> sqrt(262144 * 4/3) = 591.2 -> 576, height 443.4 -> 448; 576*448 = 258048 < 262144 -> width 608
    assert gedit.edit_size(400, 300) == (608, 448)
    assert gedit.edit_size(300, 300) == (512, 512)  # exact area: unchanged
    # 3:4 -> width 443.4 -> 448, height 591.2 -> 576; 258048 < 262144 -> width 480
    assert gedit.edit_size(300, 400) == (480, 576)
    # 2:1 at 1024 px: width 45.25 -> 32, height 22.6 -> 32: 1024 = area, kept (not 2:1 any more)
    assert gedit.edit_size(64, 32, area=32 * 32) == (32, 32)
    # 1:1 at 2048 px: 45.25 -> 32 both; 1024 < 2048 -> width 64
    assert gedit.edit_size(10, 10, area=2048) == (64, 32)


def test_gedit_writes_the_fullset_language_layout(tmp_path):
    rows = [("color_alter", "a1", "make it red", "en", _png((40, 20))),
            ("color_alter", "a1", "把它变成红色", "cn", _png((40, 20))),
            ("subject-add", "b2", "add a cat", "en", _png((20, 40)))]
    data = _gedit_parquet(tmp_path / "GEdit-Bench", rows)
    out = tmp_path / "results" / "nexusgen"
    model = SeedColorModel()
    summary = gedit.export(model, gedit.read_cases(data), out, area=2048, batch_size=8)
    assert summary["by_language"] == {"en": 2, "cn": 1} and summary["done"] == 3
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["fullset/color_alter/cn/a1.png", "fullset/color_alter/en/a1.png",
                       "fullset/subject-add/en/b2.png"]
    # 2:1 at 2048 px -> (64, 32); 1:2 -> (32, 64): one model call per size within the batch
    assert Image.open(out / "fullset/color_alter/en/a1.png").size == (64, 32)
    assert Image.open(out / "fullset/subject-add/en/b2.png").size == (32, 64)
    assert sorted((c[3], c[4]) for c in model.calls) == [(32, 64), (64, 32)]  # (height, width)


def test_gedit_bad_rows_are_named(tmp_path):
    data = _gedit_parquet(tmp_path / "g1", [("color_alter", "a1", "x", "fr", _png((8, 8)))])
    with pytest.raises(ValueError, match=r"row 0: instruction_language must be one of"):
        gedit.read_cases(data)
    data = _gedit_parquet(tmp_path / "g2", [("color_alter", "a1", "x", "en", _png((8, 8))),
                                            ("color_alter", "a1", "y", "en", _png((8, 8)))])
    with pytest.raises(ValueError, match="row 1: writes the same file as"):
        gedit.read_cases(data)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .parquet files"):
        gedit.read_cases(tmp_path / "empty")


def test_gedit_cli_on_the_tiny_model(tmp_path):
    data = _gedit_parquet(tmp_path / "GEdit-Bench", [("tone_transfer", "k9", "make it warmer", "en", _png((24, 24)))])
    out = tmp_path / "results" / "nexusgen"
    assert main(["eval", "gedit-export", "--data", str(data), "--out", str(out), "--model", "tiny",
                 "--area", "1024"]) == 0
    assert Image.open(out / "fullset/tone_transfer/en/k9.png").size == (32, 32)
