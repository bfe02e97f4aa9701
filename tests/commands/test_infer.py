"""Every inference subcommand and option runs (tiny random model, or a tiny model folder); outputs equal the
Python API's and are written atomically; bad input gives one line on stderr and exit code 2."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from nexusgen.api import NexusGen
from nexusgen.cli import main
from nexusgen.loading.folder import build_random_model, save_model_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "model"
    save_model_folder(path, build_random_model("tiny", seed=0))
    return path


@pytest.fixture(scope="module")
def api():
    return NexusGen.from_pretrained("tiny", progress=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = {}
    for name, shape in (("square.png", (64, 64, 3)), ("wide.png", (48, 80, 3))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / name)
        paths[name.split(".")[0]] = folder / name
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    Image.new("1", (9000, 8000)).save(folder / "huge.png")  # 72 M pixels > the 64 M limit
    paths.update(corrupt=folder / "corrupt.png", huge=folder / "huge.png")
    return paths


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_understand_with_several_images_and_every_option(folder, images, capsys, api):
    argv = ["understand", "--image", str(images["square"]), "--image", str(images["wide"]), "--prompt",
            "Which is bigger?", "--max-new-tokens", "5", "--device", "cpu", "--dtype", "float32"]
    code, out, err = _run([*argv, "--model", str(folder)], capsys)
    assert code == 0 and err == ""
    both = [Image.open(images["square"]).convert("RGB"), Image.open(images["wide"]).convert("RGB")]
    assert out == api.understand(both, "Which is bigger?", max_new_tokens=5) + "\n"
    code, tiny_out, _ = _run([*argv, "--model", "tiny"], capsys)
    assert code == 0 and tiny_out == out  # the saved folder holds the same weights as "tiny"


def test_generate_writes_the_api_image_atomically(images, tmp_path, capsys, api):
    out = tmp_path / "sub" / "red.png"
    argv = ["generate", "--model", "tiny", "--prompt", "a red circle", "--out", str(out), "--seed", "3",
            "--steps", "2", "--cfg", "1", "--height", "32", "--width", "48"]
    code, stdout, _ = _run(argv, capsys)
    assert code == 0 and stdout.strip() == str(out)
    expected = api.generate("a red circle", seed=3, num_steps=2, guidance_scale=1.0, height=32, width=48)
    written = Image.open(out)
    assert written.size == (48, 32) and np.array_equal(np.asarray(written), np.asarray(expected))
    assert sorted(p.name for p in out.parent.iterdir()) == ["red.png"]  # no temporary file left


def test_a_failed_write_keeps_the_old_output(tmp_path, capsys, monkeypatch):
    out = tmp_path / "keep.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out)
    before = out.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    code, stdout, err = _run(["generate", "--model", "tiny", "--prompt", "a", "--out", str(out), "--steps", "1"],
                             capsys)
    assert code == 2 and stdout == "" and err == f"nexusgen generate: error: {out}: cannot write (disk full)\n"
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["keep.png"]


@pytest.mark.parametrize("decoder", ["editing", "generation"])
def test_edit_with_each_decoder(images, tmp_path, capsys, api, decoder):
    out = tmp_path / "edited.png"
    code, _, _ = _run(["edit", "--model", "tiny", "--image", str(images["wide"]), "--prompt", "make it blue",
                       "--out", str(out), "--decoder", decoder, "--seed", "1", "--steps", "2"], capsys)
    assert code == 0
    source = Image.open(images["wide"]).convert("RGB")
    expected = api.edit(source, "make it blue", decoder=decoder, seed=1, num_steps=2)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected))


@pytest.mark.parametrize("with_image", [False, True])
def test_embed_writes_float32_image_embeds(images, tmp_path, capsys, api, with_image):
    out = tmp_path / "embeds.safetensors"
    argv = ["embed", "--model", "tiny", "--prompt", "a red circle", "--out", str(out)]
    argv += ["--image", str(images["square"])] if with_image else []
    assert _run(argv, capsys)[0] == 0
    with safe_open(str(out), framework="pt") as f:
        assert list(f.keys()) == ["image_embeds"]
        embeds = f.get_tensor("image_embeds")
    assert embeds.dtype == torch.float32 and embeds.shape == (1, 16, 64)
    source = Image.open(images["square"]).convert("RGB") if with_image else None
    torch.testing.assert_close(embeds, api.predict_image_embeds("a red circle", source), atol=0, rtol=0)


def test_chat_from_a_pipe(images, tmp_path):
    lines = [f"/image {images['square']}", "What is this?", "/image missing.png", "", "And now?", "/quit",
             "never read"]
    result = subprocess.run([sys.executable, "-m", "nexusgen", "chat", "--model", "tiny", "--out-dir",
                             str(tmp_path / "chat"), "--seed", "1"], input="\n".join(lines) + "\n",
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == ["nexusgen chat: error: missing.png: no such image file"]
    assert "Traceback" not in result.stderr
    assert len(result.stdout.splitlines()) >= 2  # two answers (each at least one line)


def test_demo_with_the_tiny_model(tmp_path, capsys):
    code, out, _ = _run(["demo", "--model", "tiny", "--out", str(tmp_path / "demo"), "--seed", "2"], capsys)
    assert code == 0
    assert out.count("Q: ") == 3 and out.count("generate: ") == 3 and out.count("edit: ") == 3
    sheet = Image.open(tmp_path / "demo" / "demo.png")
    assert sheet.size[0] > 300 and sheet.size[1] > 300


def test_bench_e2e_quick(capsys):
    import json

    code, out, _ = _run(["bench", "e2e", "--quick", "--model", "tiny"], capsys)
    report = json.loads(out)
    assert code == 0 and report["model"] == "tiny" and report["generate_batch"] == 4
    assert report["understand_new_tokens"] == 8 and report["understand_tokens_per_s"] > 0
    assert report["images_per_s_batch4"] > 0 and report["generate_latency_s_median"] > 0
    rate = report["generate_gflop_per_image"] / report["generate_latency_s_median"]
    assert report["generate_gflop_per_image"] > 0
    assert math.isclose(report["batch1_gflop_per_s"], rate)
    assert math.isclose(report["batch_speedup_bound"], 1 / report["batch1_fraction_of_peak"])
    code, out, _ = _run(["bench", "e2e", "--quick", "--model", "tiny", "--steps", "1"], capsys)
    fewer = json.loads(out)  # one denoising step instead of the model's four: fewer FLOPs per image
    assert code == 0 and report["num_steps"] == 4 and fewer["num_steps"] == 1
    assert fewer["generate_gflop_per_image"] < report["generate_gflop_per_image"]


def _bad_cases(images, tmp_path):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir(exist_ok=True)
    out = str(tmp_path / "out.png")
    return {
        "corrupt image": (["understand", "--model", "tiny", "--image", str(images["corrupt"]),
                           "--prompt", "q"], "not a readable image"),
        "too many pixels": (["edit", "--model", "tiny", "--image", str(images["huge"]), "--prompt", "q",
                             "--out", out], "more than the limit"),
        "missing image": (["embed", "--model", "tiny", "--image", "nope.png", "--prompt", "q", "--out",
                           str(tmp_path / "e.safetensors")], "no such image file"),
        "empty prompt": (["generate", "--model", "tiny", "--prompt", " ", "--out", out], "empty"),
        "unknown model": (["generate", "--model", str(tmp_path / "nowhere"), "--prompt", "q", "--out", out],
                          "unknown model"),
        "not a model": (["generate", "--model", str(not_a_model), "--prompt", "q", "--out", out],
                        "not a model folder"),
        "bad extension": (["generate", "--model", "tiny", "--prompt", "q", "--out", str(tmp_path / "x.gif")],
                          "must end in one of"),
        "bad steps": (["generate", "--model", "tiny", "--prompt", "q", "--out", out, "--steps", "0"],
                      "--steps"),
        "no negative branch": (["generate", "--model", "tiny", "--prompt", "q", "--out", out, "--cfg", "3"],
                               "no negative branch"),
        "missing bundle": (["generate", "--prompt", "q", "--out", out],
                           "bundled model 'shapes-mini' is missing"),
        "output under a file": (["generate", "--model", "tiny", "--prompt", "q", "--out",
                                 str(images["square"] / "x.png")], "is a file, not a folder"),
        "eval into a file": (["eval", "shapes", "--model", "oracle", "--num", "1", "--out",
                              str(images["square"])], "it is a file, not a folder"),
    }


@pytest.mark.parametrize("case", ["corrupt image", "too many pixels", "missing image", "empty prompt",
                                  "unknown model", "not a model", "bad extension", "bad steps",
                                  "no negative branch", "missing bundle", "output under a file",
                                  "eval into a file"])
def test_bad_input_is_one_line_and_exit_2(images, tmp_path, capsys, case, monkeypatch):
    import nexusgen.loading.folder as folder_module

    monkeypatch.setitem(folder_module.BUNDLED, "shapes-mini", tmp_path / "absent")  # for "missing bundle"
    argv, message = _bad_cases(images, tmp_path)[case]
    code, out, err = _run(argv, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err
    assert err.startswith(f"nexusgen {argv[0]}: error:")
    assert not (tmp_path / "out.png").exists()


def test_bad_input_in_a_subprocess_has_no_traceback(images):
    argv = [sys.executable, "-m", "nexusgen", "understand", "--model", "tiny", "--image",
            str(images["corrupt"]), "--prompt", "q"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "not a readable image" in result.stderr
