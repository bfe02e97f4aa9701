"""`nexusgen generate --prompts`, `edit --edits`, `understand --questions` on the bundled model (2 steps, 64 px):
the files do not depend on the batch size or the number of processes, a stopped run resumes to the same files,
bad lines stop the run before the model loads or are skipped with --skip-bad, and the benchmark exports shard
like the batch commands."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from nexusgen.cli import main
from nexusgen.commands import batch as batch_commands
from nexusgen.commands.common import load_model

STEPS = ["--steps", "2"]
PROMPTS = ["a red circle", "a large blue square", "two small green triangles", "a yellow star",
           "a purple circle and a red square"]


@pytest.fixture(scope="module")
def bundled():
    return load_model("shapes-mini")


@pytest.fixture
def loads(monkeypatch, bundled):
    """The bundled model, loaded once for the module; counts how often a command asks for it."""
    calls = []

    def load(*args):
        calls.append(args)
        return bundled

    monkeypatch.setattr(batch_commands, "load_model", load)
    return calls


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch")
    (folder / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    (folder / "sources").mkdir()
    for name, colour in (("red.png", (220, 30, 30)), ("blue.png", (30, 30, 220))):
        Image.new("RGB", (64, 64), colour).save(folder / "sources" / name)
    edits = [{"image": "sources/red.png", "prompt": "make it blue", "id": "first"},
             {"image": "sources/blue.png", "prompt": "add a circle", "seed": 11},
             {"image": "sources/red.png", "prompt": "turn it green", "decoder": "generation"},
             {"image": "sources/blue.png", "prompt": "make it red", "seed": 3, "id": "last"}]
    (folder / "edits.jsonl").write_text("".join(json.dumps(e) + "\n" for e in edits), encoding="utf-8")
    questions = [{"image": "sources/red.png", "prompt": "What colour is it?"},
                 {"prompt": "What is a circle?", "id": "text"},
                 {"image": ["sources/red.png", "sources/blue.png"], "prompt": ""}]
    (folder / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions), encoding="utf-8")
    return folder


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _contents(folder: Path) -> dict[str, bytes]:
    """Every visible file of an output folder, by name (results.jsonl included, the records' logs not)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


def _generate(files, out, *extra):
    return ["generate", "--prompts", str(files / "prompts.txt"), "--out", str(out), "--height", "64", "--width",
            "64", *STEPS, *extra]


def test_generate_batch_sizes_1_and_3_write_identical_files(files, tmp_path, capsys, loads, bundled):
    code, out, err = _run(_generate(files, tmp_path / "one", "--batch-size", "1"), capsys)
    assert (code, err) == (0, "")  # no terminal: no bar, and a clean run writes nothing on stderr
    assert out == f"nexusgen generate: done 5, skipped 0, failed 0 of 5 items -> {tmp_path / 'one'}\n"
    assert _run(_generate(files, tmp_path / "three", "--batch-size", "3"), capsys)[0] == 0
    one, three = _contents(tmp_path / "one"), _contents(tmp_path / "three")
    assert sorted(one) == ["00001.png", "00002.png", "00003.png", "00004.png", "00005.png", "results.jsonl"]
    assert one == three
    records = [json.loads(line) for line in one["results.jsonl"].decode().splitlines()]
    assert [(r["id"], r["prompt"], r["seed"]) for r in records] == [
        (f"{n + 1:05d}", p, n) for n, p in enumerate(PROMPTS)]
    assert {(r["height"], r["width"], r["num_steps"], r["model"]) for r in records} == {(64, 64, 2, "shapes-mini")}
    # the same image as a single generate call with that seed
    alone = bundled.generate(PROMPTS[2], seed=2, num_steps=2, height=64, width=64)
    assert Image.open(tmp_path / "one" / "00003.png").tobytes() == alone.tobytes()


def test_a_stopped_run_resumes_to_the_same_files_and_a_finished_one_loads_nothing(files, tmp_path, capsys, loads,
                                                                                   monkeypatch):
    reference = tmp_path / "reference"
    assert _run(_generate(files, reference, "--batch-size", "2"), capsys)[0] == 0
    out = tmp_path / "stopped"
    from nexusgen.batch import jobs

    real_save, saved = jobs.atomic_save_image, []

    def save_then_stop(image, path, *args):
        if len(saved) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the second batch
        saved.append(path)
        return real_save(image, path, *args)

    monkeypatch.setattr(jobs, "atomic_save_image", save_then_stop)
    code, _, err = _run(_generate(files, out, "--batch-size", "2"), capsys)
    assert code == 130 and "interrupted" in err
    assert sorted(p.name for p in out.glob("*.png")) == ["00001.png", "00002.png", "00003.png"]
    log = next((out / ".records").glob("*.jsonl"))
    with open(log, "a") as f:
        f.write('{"id": "00003", "li')  # a record torn by a kill counts for nothing
    monkeypatch.setattr(jobs, "atomic_save_image", real_save)
    calls_before = len(loads)
    code, stdout, _ = _run(_generate(files, out, "--batch-size", "3"), capsys)
    assert code == 0 and "done 3, skipped 2, failed 0 of 5 items" in stdout  # 00003 had an image, no record
    assert _contents(out) == _contents(reference)
    assert len(loads) == calls_before + 1
    code, stdout, _ = _run(_generate(files, out), capsys)
    assert "done 0, skipped 5" in stdout and len(loads) == calls_before + 1  # nothing to do: no model
    code, stdout, _ = _run(_generate(files, out, "--seed", "100"), capsys)
    assert "done 5, skipped 0" in stdout  # other seeds: other images


def test_ranks_write_disjoint_shards_that_together_equal_one_process(files, tmp_path, capsys, loads, monkeypatch):
    assert _run(_generate(files, tmp_path / "single", "--batch-size", "3"), capsys)[0] == 0
    sharded = tmp_path / "sharded"
    lines = []
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        code, stdout, _ = _run(_generate(files, sharded, "--batch-size", "2"), capsys)
        lines.append(stdout)
        assert code == 0
    assert "done 2, skipped 0, failed 0 (rank 1 of 2: 2 of 5 items)" in lines[0]
    assert "done 3, skipped 0, failed 0 (rank 0 of 2: 3 of 5 items)" in lines[1]
    assert _contents(sharded) == _contents(tmp_path / "single")
    assert len(list((sharded / ".records").glob("*.jsonl"))) == 1  # one process here: one log


@pytest.mark.distributed
def test_two_concurrent_processes_write_the_same_files_as_one(files, tmp_path, capsys, loads):
    """Two real processes at once, as `torchrun --nproc_per_node 2 -m nexusgen` starts them (RANK, WORLD_SIZE)."""
    assert _run(_generate(files, tmp_path / "one", "--batch-size", "5"), capsys)[0] == 0
    argv = [sys.executable, "-m", "nexusgen", *_generate(files, tmp_path / "two", "--batch-size", "2")]
    procs = [subprocess.Popen(argv, env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [err for _, err in outs] == ["", ""]
    assert _contents(tmp_path / "two") == _contents(tmp_path / "one")
    assert len(list((tmp_path / "two" / ".records").glob("*.jsonl"))) == 2  # one log per process


def test_edit_batch_sizes_1_and_3_write_identical_files(files, tmp_path, capsys, loads, bundled):
    argv = ["edit", "--edits", str(files / "edits.jsonl"), *STEPS]
    assert _run([*argv, "--out", str(tmp_path / "one"), "--batch-size", "1"], capsys)[:3:2] == (0, "")
    assert _run([*argv, "--out", str(tmp_path / "three"), "--batch-size", "3"], capsys)[0] == 0
    one = _contents(tmp_path / "one")
    assert sorted(one) == ["00002.png", "00003.png", "first.png", "last.png", "results.jsonl"]
    assert one == _contents(tmp_path / "three")
    records = {r["id"]: r for r in map(json.loads, one["results.jsonl"].decode().splitlines())}
    assert (records["00002"]["seed"], records["00003"]["seed"], records["00003"]["decoder"]) == (11, 2, "generation")
    assert records["first"]["image"] == "sources/red.png"  # as the file says: the records move with it
    alone = bundled.edit(files / "sources" / "blue.png", "make it red", seed=3, num_steps=2)
    assert Image.open(tmp_path / "one" / "last.png").tobytes() == alone.tobytes()


def test_understand_batch_answers_match_single_questions_whatever_the_batch(files, tmp_path, capsys, loads,
                                                                              bundled):
    argv = ["understand", "--questions", str(files / "questions.jsonl"), "--max-new-tokens", "6"]
    code, stdout, err = _run([*argv, "--out", str(tmp_path / "one.jsonl"), "--batch-size", "1"], capsys)
    assert (code, err) == (0, "") and "done 3, skipped 0, failed 0 of 3 items" in stdout
    assert _run([*argv, "--out", str(tmp_path / "three.jsonl"), "--batch-size", "3"], capsys)[0] == 0
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "three.jsonl").read_bytes()
    answers = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert [a["id"] for a in answers] == ["00001", "text", "00003"]
    red = Image.open(files / "sources" / "red.png").convert("RGB")
    assert answers[0]["answer"] == bundled.understand(red, "What colour is it?", max_new_tokens=6)
    assert answers[1]["answer"] == bundled.understand(None, "What is a circle?", max_new_tokens=6)


def test_bad_lines_stop_the_run_before_the_model_loads_or_are_skipped(files, tmp_path, capsys, loads):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"prompt": "a red circle"}\n{"prompt": ""}\nnot json\n{"prompt": "a blue square", "seed": 4}\n',
                    encoding="utf-8")
    argv = ["generate", "--prompts", str(path), "--out", str(tmp_path / "out"), *STEPS]
    code, stdout, err = _run(argv, capsys)
    assert code == 2 and stdout == "" and loads == []
    assert err == (f"nexusgen generate: error: {path}:2: prompt is empty: '' (and 1 more bad line); fix the file, "
                   "or pass --skip-bad to skip bad items\n")
    assert not (tmp_path / "out").exists()
    code, stdout, err = _run([*argv, "--skip-bad"], capsys)
    assert code == 0 and "done 2, skipped 0, failed 2 of 4 items" in stdout
    skipped = "nexusgen generate: bad item skipped:"
    assert err.splitlines() == [f"{skipped} {path}:2: prompt is empty: ''",
                                f"{skipped} {path}:3: not JSON (Expecting value at column 1)"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["00001.png", "00004.png"]


def test_an_image_that_does_not_decode_fails_its_item_only(files, tmp_path, capsys, loads):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    Image.new("RGB", (64, 64), (0, 200, 0)).save(tmp_path / "green.png")
    path = tmp_path / "edits.jsonl"
    path.write_text('{"image": "green.png", "prompt": "make it red"}\n{"image": "broken.png", "prompt": "x"}\n',
                    encoding="utf-8")
    argv = ["edit", "--edits", str(path), "--out", str(tmp_path / "out"), *STEPS, "--batch-size", "2"]
    code, _, err = _run(argv, capsys)
    assert code == 2 and err.startswith(f"nexusgen edit: error: {path}:2: ")
    code, stdout, err = _run([*argv, "--skip-bad"], capsys)
    assert code == 0 and "done 0, skipped 1, failed 1 of 2 items" in stdout  # line 1 was written by the first run
    assert err.startswith(f"nexusgen edit: bad item skipped: {path}:2: ")


@pytest.mark.parametrize("argv, message", [
    (["generate", "--out", "x"], "give --prompt TEXT (or --prompts FILE)"),
    (["generate", "--prompts", "p.txt", "--prompt", "y", "--out", "x"], "drop --prompt"),
    (["edit", "--edits", "e.jsonl", "--image", "a.png", "--out", "x"], "drop --image / --prompt"),
    (["understand", "--questions", "q.jsonl"], "--questions needs --out FILE.jsonl"),
    (["understand", "--questions", "q.jsonl", "--out", "a.txt"], "must end in one of .jsonl"),
    (["generate", "--prompts", "p.txt", "--out", "x", "--batch-size", "0"], "--batch-size must be an integer"),
])
def test_option_mistakes_are_one_line(tmp_path, capsys, argv, message, loads, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.txt").write_text("a circle\n", encoding="utf-8")
    code, _, err = _run(argv, capsys)
    assert code == 2 and message in err and len(err.splitlines()) == 1 and loads == []


def test_benchmark_exports_shard_over_ranks_like_the_batch_commands(tmp_path, monkeypatch):
    from nexusgen.batch.runner import Shard
    from nexusgen.eval import geneval
    from nexusgen.eval.oracle import BlankModel

    prompts = [{"prompt": f"prompt {i}", "tag": "single_object"} for i in range(5)]
    summaries = [geneval.export(BlankModel(), prompts, tmp_path, images_per_prompt=1, shard=Shard(r, 2))
                 for r in (0, 1)]
    assert [(s["done"], s["shard_items"]) for s in summaries] == [(3, 3), (2, 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{i:05d}" for i in range(5)]


@pytest.mark.parametrize(("device", "world", "cuda", "local_rank", "expected"), [
    (None, 1, 3, "2", None),  # one process: the model's default device
    ("cpu", 4, 3, "2", "cpu"),  # --device wins over the rank
    (None, 4, 0, "2", None),  # several ranks, no GPU
    (None, 4, 3, "2", "cuda:2"),  # rank r of a node takes cuda:LOCAL_RANK
    (None, 4, 3, "4", "cuda:1"),  # ... modulo the node's GPUs
    (None, 4, 2, None, "cuda:1"),  # LOCAL_RANK unset: RANK (3) modulo the GPUs
])
def test_rank_device_spreads_torchrun_ranks_over_the_gpus(monkeypatch, device, world, cuda, local_rank, expected):
    import torch

    from nexusgen.batch.runner import Shard
    from nexusgen.commands.common import rank_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert rank_device(device, Shard(min(3, world - 1), world)) == expected
