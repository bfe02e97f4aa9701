"""Reading prompt / edit / question files (every bad line named file:line), and the batched, resumable, sharded
item loop with its bad-item handling."""

import json

import pytest
from PIL import Image

from nexusgen.batch.items import EDITS, PROMPTS, QUESTIONS, read_items
from nexusgen.batch.records import RecordLog, matches
from nexusgen.batch.runner import ItemError, Shard, run_items
from nexusgen.files import OutputError


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_plain_prompt_lines_take_their_line_number_as_id_and_seed_offset(tmp_path):
    path = _write(tmp_path / "prompts.txt", ["a red circle", "", "  ", "a blue square  "])
    items, bad = read_items(path, PROMPTS, seed=10)
    assert bad == []
    assert [(i.id, i.line, i.prompt, i.seed) for i in items] == [("00001", 1, "a red circle", 10),
                                                                  ("00004", 4, "a blue square  ", 13)]
    assert items[0].where == f"{path}:1"


def test_jsonl_prompts_keep_their_own_seed_size_and_id(tmp_path):
    path = _write(tmp_path / "p.jsonl", [json.dumps({"prompt": "x", "seed": 7, "height": 32, "width": 48, "id": 5}),
                                         json.dumps({"prompt": "y"})])
    items, bad = read_items(path, PROMPTS, seed=100)
    assert bad == []
    assert (items[0].id, items[0].seed, items[0].options) == ("5", 7, {"height": 32, "width": 48})
    assert (items[1].id, items[1].seed, items[1].options) == ("00002", 101, {})


@pytest.mark.parametrize("line, message", [
    ("{not json", "not JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"prompt": "x", "promt": "y"}', "unknown field 'promt'"),
    ('{"seed": 1}', 'missing "prompt"'),
    ('{"prompt": "   "}', "prompt is empty"),
    ('{"prompt": "x", "seed": -3}', "seed must be an integer"),
    ('{"prompt": "x", "seed": 1.5}', "seed must be an integer"),
    ('{"prompt": "x", "height": 50}', "height must be a multiple of 16"),
    ('{"prompt": "x", "id": "../escape"}', "must be a plain file name"),
    ('{"prompt": "x", "id": ".hidden"}', "must be a plain file name"),
])
def test_a_bad_prompt_line_is_named_by_file_and_line(tmp_path, line, message):
    path = _write(tmp_path / "p.jsonl", ['{"prompt": "fine"}', line, '{"prompt": "also fine"}'])
    items, bad = read_items(path, PROMPTS)
    assert [i.line for i in items] == [1, 3]
    assert len(bad) == 1 and str(bad[0]).startswith(f"{path}:2: ") and message in str(bad[0])


def test_repeated_ids_and_line_number_ids_collide_on_the_later_line(tmp_path):
    path = _write(tmp_path / "p.jsonl", ['{"prompt": "a", "id": "00002"}', '{"prompt": "b"}'])
    items, bad = read_items(path, PROMPTS)
    assert [i.id for i in items] == ["00002"]
    assert str(bad[0]) == f"{path}:2: id '00002' is already used on line 1"


def test_edit_images_are_relative_to_the_file_folder_and_must_exist(tmp_path):
    folder = tmp_path / "set"
    (folder / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "img" / "a.png")
    path = _write(folder / "edits.jsonl", [
        '{"image": "img/a.png", "prompt": "make it blue", "decoder": "generation", "seed": 4}',
        '{"image": "img/missing.png", "prompt": "x"}',
        '{"prompt": "no image"}',
        '{"image": "img/a.png", "prompt": "x", "decoder": "painter"}'])
    items, bad = read_items(path, EDITS)
    assert items[0].images == (folder / "img" / "a.png",) and items[0].options == {"decoder": "generation"}
    assert [str(e).split(": ", 1)[1] for e in bad] == [
        f"image not found: {folder / 'img' / 'missing.png'}", 'missing "image"',
        "decoder must be one of editing, generation, got 'painter'"]
    assert [e.where for e in bad] == [f"{path}:{n}" for n in (2, 3, 4)]


def test_questions_may_have_no_image_several_images_or_an_empty_prompt_with_an_image(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    path = _write(tmp_path / "q.jsonl", ['{"prompt": "text only"}', '{"image": ["a.png", "a.png"], "prompt": ""}',
                                         '{"prompt": ""}'])
    items, bad = read_items(path, QUESTIONS)
    assert [len(i.images) for i in items] == [0, 2]
    assert len(bad) == 1 and "prompt is empty" in str(bad[0])


def test_unreadable_or_empty_files_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        read_items(tmp_path / "nothing.txt", PROMPTS)
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_items(tmp_path / "latin1.txt", PROMPTS)
    with pytest.raises(ValueError, match="no prompts"):
        read_items(_write(tmp_path / "blank.txt", ["", " "]), PROMPTS)


# ----------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------
def test_shards_are_disjoint_and_cover_every_item():
    items = list(range(10))
    shards = [Shard(rank, 3).take(items) for rank in range(3)]
    assert sorted(sum(shards, [])) == items and shards[1] == [1, 4, 7]
    assert Shard.from_env({"RANK": "1", "WORLD_SIZE": "3"}) == Shard(1, 3)
    assert Shard.from_env({}) == Shard(0, 1)
    with pytest.raises(ValueError, match="rank 3 is not in 0..1"):
        Shard.from_env({"RANK": "3", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="WORLD_SIZE must be a number"):
        Shard.from_env({"WORLD_SIZE": "two"})


def test_done_items_are_skipped_and_batches_follow_the_input_order():
    calls = []
    summary = run_items(list(range(7)), is_done=lambda i: i in (1, 2), process=calls.append, batch_size=2,
                        desc="t", progress=False)
    assert calls == [[0, 3], [4, 5], [6]]
    assert (summary.total, summary.done, summary.skipped, summary.failed) == (7, 5, 2, 0)
    assert summary.line() == "done 5, skipped 2, failed 0 of 7 items"


def test_a_bad_item_fails_the_run_or_alone_is_skipped_with_skip_bad():
    done = []

    def process(batch):
        if 3 in batch:
            raise ItemError("f:3", "bad")
        done.extend(batch)

    with pytest.raises(ItemError, match="f:3: bad"):
        run_items(list(range(6)), is_done=lambda i: False, process=process, batch_size=3, desc="t", progress=False)
    done.clear()
    lines = []
    summary = run_items(list(range(6)), is_done=lambda i: False, process=process, batch_size=3, desc="t",
                        progress=False, skip_bad=True, report=lines.append)
    assert sorted(done) == [0, 1, 2, 4, 5]  # the rest of the bad item's batch was still processed
    assert (summary.done, summary.failed, lines) == (5, 1, ["f:3: bad"])


def test_a_plain_value_error_is_named_by_where_and_an_output_error_is_never_skipped():
    def process(batch):
        if 1 in batch:
            raise ValueError("prompt 0 is too long")

    summary = run_items([0, 1], is_done=lambda i: False, process=process, batch_size=2, desc="t",
                        progress=False, where=lambda i: f"file:{i + 1}", skip_bad=True, report=lambda _: None)
    assert summary.problems == ["file:2: prompt 0 is too long"]

    def full(batch):
        raise OutputError("out", "No space left on device")

    with pytest.raises(OutputError):
        run_items([0], is_done=lambda i: False, process=full, batch_size=1, desc="t", progress=False, skip_bad=True)


def test_record_logs_of_several_processes_merge_in_line_order_and_ignore_a_torn_line(tmp_path):
    folder = tmp_path / ".records"
    first, second = RecordLog(folder), RecordLog(folder)
    second.own = folder / "other-host-1.jsonl"
    first.append([{"id": "b", "line": 2}])
    second.append([{"id": "a", "line": 1}, {"id": "c", "line": 3}])
    with open(second.own, "a") as f:
        f.write('{"id": "d", "li')  # a killed append
    assert first.merge(tmp_path / "results.jsonl") == 3
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert matches({"seed": 1, "height": 64}, {"seed": 1, "height": None})
    assert not matches({"seed": 1, "height": 64}, {"seed": 1, "height": 32}) and not matches(None, {})
