"""The bad-input corpus: every command against a table of bad values.

Each bad command line must exit with code 2 and print exactly one line on stderr that names the culprit
(the option, or the user's path), with no traceback and no file left behind, and, for option errors, come
before torch is imported and within a time bound (a boundary check on a loaded machine, not a benchmark).
The whole table runs in one fresh interpreter (tests/bad_input_driver.py), as a user's command does.

The same values against the Python API raise `ValueError` with a message naming the argument.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from nexusgen.data.synthetic import SyntheticSource, write_jsonl

OPTION_ERROR_SECONDS = 3.0
"""Generous: an option error costs milliseconds; the bound catches a model load (4-8 s) before it."""

BAD_UTF8 = "a red \udcff circle"  # what Python makes of the bytes b"a red \xff circle" on the command line
SEED_2_70 = str(2**70)
LONG_PROMPT = "a red circle " * 3000  # far past shapes-mini's context

# (id, argv, culprit named on the line). Option errors: refused before torch is imported.
OPTION_CASES = [
    # generate: every image option at and past its edges
    ("generate-steps-0", ["generate", "--prompt", "a red circle", "--out", "x.png", "--steps", "0"], "--steps"),
    ("generate-steps-huge", ["generate", "--prompt", "a red circle", "--out", "x.png", "--steps", "1000000000"],
     "--steps"),
    ("generate-steps-text", ["generate", "--prompt", "a red circle", "--out", "x.png", "--steps", "ten"], "--steps"),
    ("generate-cfg-nan", ["generate", "--prompt", "a red circle", "--out", "x.png", "--cfg", "nan"], "--guidance"),
    ("generate-cfg-inf", ["generate", "--prompt", "a red circle", "--out", "x.png", "--cfg", "inf"], "--guidance"),
    ("generate-cfg-negative", ["generate", "--prompt", "a red circle", "--out", "x.png", "--cfg", "-1"],
     "--guidance"),
    ("generate-seed-2**70", ["generate", "--prompt", "a red circle", "--out", "x.png", "--seed", SEED_2_70],
     "--seed"),
    ("generate-seed-negative", ["generate", "--prompt", "a red circle", "--out", "x.png", "--seed", "-1"], "--seed"),
    ("generate-height-100", ["generate", "--prompt", "a red circle", "--out", "x.png", "--height", "100"],
     "--height"),
    ("generate-width-0", ["generate", "--prompt", "a red circle", "--out", "x.png", "--width", "0"], "--width"),
    ("generate-size-huge", ["generate", "--prompt", "a red circle", "--out", "x.png", "--height", "4096",
                            "--width", "4096"], "4096x4096"),
    ("generate-device-mps", ["generate", "--prompt", "a red circle", "--out", "x.png", "--device", "mps"],
     "--device"),
    ("generate-device-meta", ["generate", "--prompt", "a red circle", "--out", "x.png", "--device", "meta"],
     "--device"),
    ("generate-device-unknown", ["generate", "--prompt", "a red circle", "--out", "x.png", "--device", "gpu0"],
     "--device"),
    ("generate-dtype", ["generate", "--prompt", "a red circle", "--out", "x.png", "--dtype", "int8"], "--dtype"),
    ("generate-prompt-empty", ["generate", "--prompt", "  ", "--out", "x.png"], "--prompt"),
    ("generate-prompt-utf8", ["generate", "--prompt", BAD_UTF8, "--out", "x.png"], "--prompt"),
    ("generate-model-unknown", ["generate", "--model", "no-such-model", "--prompt", "a red circle", "--out",
                                "x.png"], "no-such-model"),
    ("generate-model-broken", ["generate", "--model", "adir", "--prompt", "a red circle", "--out", "x.png"],
     "adir"),
    ("generate-out-parent-file", ["generate", "--prompt", "a red circle", "--out", "afile/x.png"], "afile/x.png"),
    ("generate-out-folder", ["generate", "--prompt", "a red circle", "--out", "adir"], "adir"),
    ("generate-out-extension", ["generate", "--prompt", "a red circle", "--out", "x.gif"], "x.gif"),
    # edit
    ("edit-image-missing", ["edit", "--image", "missing.png", "--prompt", "Remove the red circle.", "--out",
                            "x.png"], "missing.png"),
    ("edit-image-corrupt", ["edit", "--image", "bad.png", "--prompt", "Remove the red circle.", "--out", "x.png"],
     "bad.png"),
    ("edit-steps-huge", ["edit", "--image", "img.png", "--prompt", "Remove the red circle.", "--out", "x.png",
                         "--steps", "100000"], "--steps"),
    ("edit-guidance-nan", ["edit", "--image", "img.png", "--prompt", "Remove the red circle.", "--out", "x.png",
                           "--guidance", "nan"], "--guidance"),
    ("edit-prompt-utf8", ["edit", "--image", "img.png", "--prompt", BAD_UTF8, "--out", "x.png"], "--prompt"),
    ("edit-out-parent-file", ["edit", "--image", "img.png", "--prompt", "Remove the red circle.", "--out",
                              "afile/x.png"], "afile/x.png"),
    ("edit-decoder", ["edit", "--image", "img.png", "--prompt", "Remove the red circle.", "--out", "x.png",
                      "--decoder", "best"], "--decoder"),
    # understand
    ("understand-tokens-0", ["understand", "--prompt", "Describe the image.", "--image", "img.png",
                             "--max-new-tokens", "0"], "--max-new-tokens"),
    ("understand-tokens-huge", ["understand", "--prompt", "Describe the image.", "--image", "img.png",
                                "--max-new-tokens", "1000000000"], "--max-new-tokens"),
    ("understand-temperature-nan", ["understand", "--prompt", "Describe the image.", "--temperature", "nan"],
     "--temperature"),
    ("understand-top-p-0", ["understand", "--prompt", "Describe the image.", "--top-p", "0"], "--top-p"),
    ("understand-top-k-negative", ["understand", "--prompt", "Describe the image.", "--top-k", "-1"], "--top-k"),
    ("understand-seed-2**70", ["understand", "--prompt", "Describe the image.", "--seed", SEED_2_70], "--seed"),
    ("understand-prompt-utf8", ["understand", "--prompt", BAD_UTF8], "--prompt"),
    ("understand-prompt-empty", ["understand", "--prompt", ""], "--prompt"),
    ("understand-image-missing", ["understand", "--prompt", "Describe the image.", "--image", "missing.png"],
     "missing.png"),
    ("understand-device-meta", ["understand", "--prompt", "Describe the image.", "--device", "meta"], "--device"),
    # chat, embed, demo
    ("chat-seed-2**70", ["chat", "--seed", SEED_2_70], "--seed"),
    ("chat-out-dir-file", ["chat", "--out-dir", "afile"], "afile"),
    ("chat-device-mps", ["chat", "--device", "mps"], "--device"),
    ("embed-out-extension", ["embed", "--prompt", "a red circle", "--out", "x.png"], "x.png"),
    ("embed-out-parent-file", ["embed", "--prompt", "a red circle", "--out", "afile/x.safetensors"],
     "afile/x.safetensors"),
    ("embed-prompt-utf8", ["embed", "--prompt", BAD_UTF8, "--out", "x.safetensors"], "--prompt"),
    ("embed-image-corrupt", ["embed", "--prompt", "Remove the red circle.", "--image", "bad.png", "--out",
                             "x.safetensors"], "bad.png"),
    ("demo-out-file", ["demo", "--out", "afile"], "afile"),
    ("demo-seed-2**70", ["demo", "--seed", SEED_2_70], "--seed"),
    ("demo-device-meta", ["demo", "--device", "meta"], "--device"),
    # eval
    ("eval-num-0", ["eval", "shapes", "--out", "ev", "--num", "0"], "--num"),
    ("eval-steps-huge", ["eval", "shapes", "--out", "ev", "--steps", "1000000000"], "--steps"),
    ("eval-guidance-inf", ["eval", "shapes", "--out", "ev", "--guidance", "inf"], "--guidance"),
    ("eval-seed-batch-past-range", ["eval", "shapes", "--out", "ev", "--seed", str(2**64 - 1), "--num", "2"],
     "--seed"),
    ("eval-out-file", ["eval", "shapes", "--out", "afile"], "afile"),
    ("eval-out-used", ["eval", "shapes", "--out", "adir"], "adir"),
    ("eval-tasks", ["eval", "shapes", "--out", "ev", "--tasks", "paint"], "paint"),
    ("geneval-batch-0", ["eval", "geneval-export", "--prompts", "p.jsonl", "--out", "ev", "--batch-size", "0"],
     "--batch-size"),
    ("geneval-prompts-missing", ["eval", "geneval-export", "--prompts", "missing.jsonl", "--out", "ev"],
     "missing.jsonl"),
    ("dpg-resolution", ["eval", "dpg-export", "--prompts", "adir", "--out", "ev", "--resolution", "100"],
     "--resolution"),
    ("eval-understand-tokens", ["eval", "understand", "--benchmark", "pope", "--data", "adir", "--out", "ev",
                                "--max-new-tokens", "0"], "--max-new-tokens"),
    # tooling
    ("convert-official-missing", ["convert", "missing-dir", "out"], "missing-dir"),
    ("convert-out-file", ["convert", "adir", "afile"], "afile"),
    ("export-official-model-missing", ["export-official", "missing-dir", "out"], "missing-dir"),
    ("export-official-out-file", ["export-official", "adir", "afile/out"], "afile"),
    ("assemble-qwen-missing", ["assemble", "--qwen", "missing-dir", "--flux", "adir", "--out", "out"],
     "missing-dir"),
    ("assemble-device-mps", ["assemble", "--qwen", "adir", "--flux", "adir", "--out", "out", "--device", "mps"],
     "--device"),
    ("train-out-file", ["train", "tiny-ar", "--out", "afile"], "afile"),
    ("train-recipe-unknown", ["train", "no-such-recipe", "--out", "run"], "no-such-recipe"),
    ("train-set-unknown", ["train", "tiny-ar", "--out", "run", "--set", "no_such_field=1"], "no_such_field"),
    ("export-checkpoint-step", ["export-checkpoint", "adir", "--out", "out", "--step", "-1"], "--step"),
    ("export-checkpoint-out-file", ["export-checkpoint", "adir", "--out", "afile/m"], "afile"),
    ("prepare-embeds-batch-0", ["prepare-embeds", "--data", "d.jsonl", "--kind", "generate", "--out", "emb",
                                "--batch-size", "0"], "--batch-size"),
    ("prepare-embeds-out-file", ["prepare-embeds", "--data", "d.jsonl", "--kind", "generate", "--out", "afile"],
     "afile"),
    ("prepare-embeds-data-missing", ["prepare-embeds", "--data", "missing.jsonl", "--kind", "generate", "--out",
                                     "emb"], "missing.jsonl"),
    ("serve-port", ["serve", "--port", "70000"], "--port"),
    ("serve-device-meta", ["serve", "--device", "meta", "--port", "0"], "--device"),
    ("bench-steps-0", ["bench", "e2e", "--steps", "0"], "--steps"),
    # batch work: a bad line of the file is named file:line, before torch loads
    ("generate-prompts-bad-line", ["generate", "--prompts", "bad-prompts.jsonl", "--out", "gen"],
     "bad-prompts.jsonl:2"),
    ("generate-prompts-missing", ["generate", "--prompts", "missing.txt", "--out", "gen"], "missing.txt"),
    ("generate-prompts-batch-size-0", ["generate", "--prompts", "prompts.txt", "--out", "gen", "--batch-size", "0"],
     "--batch-size"),
    ("generate-prompts-out-file", ["generate", "--prompts", "prompts.txt", "--out", "afile"], "afile"),
    ("edit-edits-image-missing", ["edit", "--edits", "bad-edits.jsonl", "--out", "ed"], "bad-edits.jsonl:1"),
    ("understand-questions-out-txt", ["understand", "--questions", "questions.jsonl", "--out", "a.txt"], ".jsonl"),
]

# Errors found once the model is loaded (they need its tokenizer and context), still before any generation.
MODEL_CASES = [
    ("understand-prompt-past-context", ["understand", "--prompt", LONG_PROMPT], "context"),
    ("generate-prompt-past-context", ["generate", "--prompt", LONG_PROMPT, "--out", "x.png"], "context"),
    ("edit-prompt-past-context", ["edit", "--image", "img.png", "--prompt", LONG_PROMPT, "--out", "x.png"],
     "context"),
    ("embed-prompt-past-context", ["embed", "--prompt", LONG_PROMPT, "--out", "x.safetensors"], "context"),
]


FULL_DISK_BYTES = 64
"""Writes past this size fail (tests/bad_input_driver.py): a full disk for every command that writes."""

# A full disk under the command's output: one line naming the user's path (not a temporary file), nothing
# left behind (also no folder the command created).
FULL_DISK_CASES = [
    ("generate-full-disk", ["generate", "--prompt", "a red circle", "--out", "new/x.png"], "new/x.png"),
    ("edit-full-disk", ["edit", "--image", "img.png", "--prompt", "Remove the red circle.", "--out", "x.png"],
     "x.png"),
    ("embed-full-disk", ["embed", "--prompt", "a red circle", "--out", "x.safetensors"], "x.safetensors"),
    ("demo-full-disk", ["demo", "--out", "demo"], "demo"),
    ("eval-full-disk", ["eval", "shapes", "--num", "2", "--tasks", "understand", "--out", "ev"], "ev"),
    ("train-full-disk", ["train", "tiny-ar", "--out", "run", "--set", "max_steps=2"], "run"),
    ("prepare-embeds-full-disk", ["prepare-embeds", "--data", "g.jsonl", "--model", "tiny", "--kind", "generate",
                                  "--out", "emb"], "emb"),
    ("generate-prompts-full-disk", ["generate", "--prompts", "prompts.txt", "--out", "gen", "--steps", "2"], "gen"),
]

# chat: a bad line is one error line and the conversation goes on; none of them reaches the model.
CHAT_LINES = ["/colour red", "a red \udcff circle", "Make <image> green.", "/quit"]
CHAT_CULPRITS = ["/colour", "UTF-8", "/image PATH"]


# Quiet success: a command that works prints nothing on stderr (no third-party warning), and writes its output.
SUCCESS_CASES = [
    ("generate-ok", ["generate", "--prompt", "a red circle", "--out", "ok.png", "--steps", "2"], ["ok.png"]),
    ("edit-ok", ["edit", "--image", "img.png", "--prompt", "Add a red circle.", "--out", "ok.png", "--steps", "2"],
     ["ok.png"]),
    ("understand-ok", ["understand", "--image", "img.png", "--prompt", "How many shapes are there?"], []),
    ("embed-ok", ["embed", "--prompt", "a red circle", "--out", "ok.safetensors"], ["ok.safetensors"]),
    ("eval-ok", ["eval", "shapes", "--num", "2", "--tasks", "understand", "--out", "ev"], ["ev"]),
    ("generate-prompts-ok", ["generate", "--prompts", "prompts.txt", "--out", "gen", "--steps", "2"], ["gen"]),
    ("understand-questions-ok", ["understand", "--questions", "questions.jsonl", "--out", "answers.jsonl",
                                 "--max-new-tokens", "4"], ["answers.jsonl"]),
]


def _inputs(folder: Path) -> None:
    """The files every case may point at: a good image, a corrupt one, a file, a folder with a file in it."""
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64), (250, 250, 250)).save(folder / "img.png")
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "afile").write_text("a file\n")
    (folder / "adir").mkdir()
    (folder / "adir" / "keep.txt").write_text("kept\n")
    (folder / "p.jsonl").write_text('{"tag": "single_object", "include": [], "prompt": "a photo of a cat"}\n')
    (folder / "d.jsonl").write_text("")
    write_jsonl(SyntheticSource(2, seed=1, image_size=48, tasks=("generate",)), folder / "g.jsonl")
    (folder / "prompts.txt").write_text("a red circle\na blue square\n")
    (folder / "bad-prompts.jsonl").write_text('{"prompt": "a red circle"}\n{"prompt": ""}\n')
    (folder / "bad-edits.jsonl").write_text('{"image": "missing.png", "prompt": "Add a red circle."}\n')
    (folder / "questions.jsonl").write_text('{"image": "img.png", "prompt": "How many shapes are there?"}\n')


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bad_input")
    cases = [{"id": case_id, "argv": argv} for case_id, argv, _ in OPTION_CASES + MODEL_CASES]
    cases += [{"id": case_id, "argv": argv, "max_file_bytes": FULL_DISK_BYTES}
              for case_id, argv, _ in FULL_DISK_CASES]
    cases += [{"id": case_id, "argv": argv} for case_id, argv, _ in SUCCESS_CASES]
    cases.append({"id": "chat-bad-lines", "argv": ["chat", "--out-dir", "chat"],
                  "stdin": "".join(line + "\n" for line in CHAT_LINES)})
    for case in cases:
        _inputs(root / "cases" / case["id"])
    (root / "cases.json").write_text(json.dumps(cases))
    driver = Path(__file__).with_name("bad_input_driver.py")
    subprocess.run([sys.executable, str(driver), str(root / "cases.json"), str(root / "report.json")],
                   check=True, timeout=900)
    return json.loads((root / "report.json").read_text())


def _check_rejection(result: dict, culprit: str) -> None:
    lines = result["stderr"].splitlines()
    assert result["code"] == 2, result
    assert "Traceback" not in result["stderr"], result["stderr"]
    assert len(lines) == 1, result["stderr"]
    assert culprit.lower() in lines[0].lower(), lines[0]
    assert result["left"] == [] and result["gone"] == [], result


@pytest.mark.parametrize(("case_id", "culprit"), [(c, culprit) for c, _, culprit in OPTION_CASES],
                         ids=[c for c, _, _ in OPTION_CASES])
def test_option_error_is_one_fast_line_before_torch(report, case_id, culprit):
    result = report[case_id]
    _check_rejection(result, culprit)
    assert not result["torch_loaded"], f"{case_id}: torch was imported before the option was refused"
    assert result["seconds"] < OPTION_ERROR_SECONDS, result["seconds"]


@pytest.mark.parametrize(("case_id", "culprit"), [(c, culprit) for c, _, culprit in MODEL_CASES],
                         ids=[c for c, _, _ in MODEL_CASES])
def test_model_bound_error_is_one_line(report, case_id, culprit):
    _check_rejection(report[case_id], culprit)


@pytest.mark.parametrize(("case_id", "culprit"), [(c, culprit) for c, _, culprit in FULL_DISK_CASES],
                         ids=[c for c, _, _ in FULL_DISK_CASES])
def test_full_disk_is_one_line_naming_the_output_and_leaves_nothing(report, case_id, culprit):
    result = report[case_id]
    _check_rejection(result, culprit)
    assert "tmp" not in result["stderr"], result["stderr"]  # the user's path, not a temporary name


@pytest.mark.parametrize(("case_id", "outputs"), [(c, outputs) for c, _, outputs in SUCCESS_CASES],
                         ids=[c for c, _, _ in SUCCESS_CASES])
def test_success_is_quiet(report, case_id, outputs):
    result = report[case_id]
    assert result["code"] == 0 and result["stderr"] == "", result
    assert set(outputs) <= set(result["left"]), result


def test_chat_bad_lines_are_one_line_each_and_never_reach_the_model(report):
    result = report["chat-bad-lines"]
    lines = result["stderr"].splitlines()
    assert result["code"] == 0 and "Traceback" not in result["stderr"], result
    assert len(lines) == len(CHAT_CULPRITS), lines
    for line, culprit in zip(lines, CHAT_CULPRITS, strict=True):
        assert line.startswith("nexusgen chat: error: ") and culprit in line, line
    assert result["stdout"] == "" and result["left"] == [], result  # no answer, no image


# ----------------------------------------------------------------------------------------------------
# The same values against the Python API: ValueError naming the argument (the checks are shared:
# nexusgen.validation).
# ----------------------------------------------------------------------------------------------------
IMAGE = Image.new("RGB", (64, 64), (250, 250, 250))
API_CASES = [
    ("steps-0", lambda ng: ng.generate("a red circle", num_steps=0), "num_steps"),
    ("steps-huge", lambda ng: ng.generate("a red circle", num_steps=10**9), "num_steps"),
    ("guidance-nan", lambda ng: ng.generate("a red circle", guidance_scale=math.nan), "guidance_scale"),
    ("guidance-inf", lambda ng: ng.edit(IMAGE, "Remove the red circle.", guidance_scale=math.inf),
     "guidance_scale"),
    ("seed-2**70", lambda ng: ng.generate("a red circle", seed=2**70), "seed"),
    ("seed-batch-past-range", lambda ng: ng.generate(["a red circle", "a blue square"], seed=2**64 - 1), "seed"),
    ("seed-list-entry", lambda ng: ng.generate(["a red circle", "a blue square"], seed=[0, -1]), "seed[1]"),
    ("height-100", lambda ng: ng.generate("a red circle", height=100), "height"),
    ("size-huge", lambda ng: ng.generate("a red circle", height=4096, width=4096), "4096x4096"),
    ("prompt-utf8", lambda ng: ng.generate(BAD_UTF8), "UTF-8"),
    ("prompt-empty", lambda ng: ng.generate(" "), "empty"),
    ("prompt-past-context", lambda ng: ng.generate(LONG_PROMPT), "context"),
    ("embeds-prompt-past-context", lambda ng: ng.predict_image_embeds(LONG_PROMPT), "context"),
    ("understand-past-context", lambda ng: ng.understand(None, LONG_PROMPT), "context"),
    ("understand-utf8", lambda ng: ng.understand(IMAGE, BAD_UTF8), "UTF-8"),
    ("tokens-0", lambda ng: ng.understand(IMAGE, "Describe the image.", max_new_tokens=0), "max_new_tokens"),
    ("tokens-huge", lambda ng: ng.understand(IMAGE, "Describe the image.", max_new_tokens=10**9), "max_new_tokens"),
    ("temperature-nan", lambda ng: ng.understand(IMAGE, "Describe the image.", temperature=math.nan),
     "temperature"),
    ("top-p-0", lambda ng: ng.understand(IMAGE, "Describe the image.", top_p=0.0), "top_p"),
    ("edit-decoder", lambda ng: ng.edit(IMAGE, "Remove the red circle.", decoder="best"), "decoder"),
    ("edit-not-an-image", lambda ng: ng.edit("missing.png", "Remove the red circle."), "missing.png"),
    ("chat-image-in-text", lambda ng: ng.chat([{"role": "user", "content": "Make <image> green."}]), "<image>"),
    ("chat-utf8", lambda ng: ng.chat([{"role": "user", "content": BAD_UTF8}]), "UTF-8"),
    ("chat-steps-huge", lambda ng: ng.chat([{"role": "user", "content": "a red circle"}], num_steps=10**9),
     "num_steps"),
]
LOAD_CASES = [
    ("device-mps", dict(device="mps"), "device"),
    ("device-meta", dict(device="meta"), "device"),
    ("dtype-int8", dict(dtype="int8"), "dtype"),
    ("model-unknown", dict(name="no-such-model"), "no-such-model"),
]


@pytest.fixture(scope="module")
def bundled():
    from nexusgen import NexusGen

    return NexusGen.from_pretrained("shapes-mini")


@pytest.mark.parametrize(("call", "culprit"), [(call, culprit) for _, call, culprit in API_CASES],
                         ids=[case_id for case_id, _, _ in API_CASES])
def test_api_refuses_the_same_values(bundled, call, culprit):
    with pytest.raises(ValueError) as caught:
        call(bundled)
    message = str(caught.value)
    assert culprit in message and "\n" not in message, message


@pytest.mark.parametrize(("kwargs", "culprit"), [(kwargs, culprit) for _, kwargs, culprit in LOAD_CASES],
                         ids=[case_id for case_id, _, _ in LOAD_CASES])
def test_api_load_refuses_bad_device_dtype_and_name(kwargs, culprit):
    from nexusgen import NexusGen

    kwargs = {"name": "shapes-mini", **kwargs}
    with pytest.raises(ValueError, match=culprit):
        NexusGen.from_pretrained(kwargs.pop("name"), **kwargs)
