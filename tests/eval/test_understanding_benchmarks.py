"""MME, MMBench, MMMU and POPE: published file layouts read, official scoring against hand-computed values,
resumable answering, and `nexusgen eval understand` on the tiny model."""

import base64
import io
import json

import pytest
from PIL import Image

from nexusgen.cli import main
from nexusgen.eval.understanding import mmbench, mme, mmmu, pope, runner
from nexusgen.eval.understanding.questions import AnswerLog


class ScriptedModel:
    """Answers each prompt from a table (the scorers, not a model, are under test)."""

    name = "scripted"

    def __init__(self, answers: dict[str, str]):
        self.answers, self.calls = answers, []

    def understand(self, images, prompts, max_new_tokens=16):
        self.calls.append(list(prompts))
        assert len(images) == len(prompts) and all(im is not None for im in images)
        return [self.answers[p] for p in prompts]


def _answer_all(questions, answer_of, tmp_path, batch_size=2):
    """Run the resumable answering with a scripted model; returns the answer dict."""
    model = ScriptedModel({q.prompt: answer_of(q) for q in questions})
    log = AnswerLog(tmp_path / "answers.jsonl")
    runner.answer_questions(model, questions, log, batch_size=batch_size)
    return log.read()


def _png(color="white", size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- MME
def _mme_folder(root):
    """existence (flat layout, 2 images), artwork (images/ + questions_answers_YN/), code_reasoning."""
    def add(task, name, lines, nested=False):
        image_dir = root / task / "images" if nested else root / task
        text_dir = root / task / "questions_answers_YN" if nested else root / task
        image_dir.mkdir(parents=True, exist_ok=True)
        text_dir.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), "white").save(image_dir / f"{name}.jpg")
        (text_dir / f"{name}.txt").write_text("".join(f"{q}\t{a}\n" for q, a in lines))

    add("existence", "a", [("Is there a cat? Please answer yes or no.", "Yes"), ("Is there a dog?", "No")])
    add("existence", "b", [("Is there a car?", "Yes"), ("Is there a bus?", "No")])
    add("artwork", "c", [("Is this by Monet?", "Yes"), ("Is this by Dali?", "No")], nested=True)
    add("code_reasoning", "d", [("Does it print 3?", "Yes"), ("Does it print 4?", "No")])
    return root


MME_ANSWERS = {"Is there a cat? Please answer yes or no.": "Yes", "Is there a dog?": "yes, there is",
               "Is there a car?": "Yes.", "Is there a bus?": "No", "Is this by Monet?": "I think yes",
               "Is this by Dali?": "no", "Does it print 3?": "yes", "Does it print 4?": "No, it prints 3"}


def test_mme_accuracy_plus_and_totals_by_hand(tmp_path):
    questions = mme.load(_mme_folder(tmp_path / "MME"))
    answers = _answer_all(questions, lambda q: MME_ANSWERS[q.prompt], tmp_path)
    scores = mme.score(questions, answers)
    # existence: 3 of 4 right (the dog answer parses as yes) -> 75; image b both right -> acc+ 50 -> 125
    assert scores["subtasks"]["existence"] == {"accuracy": 75.0, "accuracy_plus": 50.0, "score": 125.0, "images": 2}
    # artwork: "I think yes" -> first 4 chars "i th" -> other (wrong); "no" right -> 50 + 0
    assert scores["subtasks"]["artwork"]["score"] == 50.0
    assert scores["subtasks"]["code_reasoning"]["score"] == 200.0
    assert scores["perception"] == 175.0 and scores["cognition"] == 200.0
    assert "count" in scores["missing_subtasks"]
    mme.write_official(tmp_path / "out", questions, answers)
    lines = (tmp_path / "out" / "mme" / "existence.txt").read_text().splitlines()
    assert lines[:2] == ["a.jpg\tIs there a cat? Please answer yes or no.\tYes\tYes",
                         "a.jpg\tIs there a dog?\tNo\tyes, there is"]


def test_mme_parsing_matches_the_official_rules():
    assert [mme.parse_answer(a) for a in ["Yes", "no", "Yes, it is", "Nope", "maybe", "The answer is yes", ""]] \
        == ["yes", "no", "yes", "no", "other", "other", "other"]


def test_mme_bad_files(tmp_path):
    root = _mme_folder(tmp_path / "MME")
    (root / "existence" / "a.txt").write_text("only one line\tYes\n")
    with pytest.raises(ValueError, match="a.txt: expected 2 question lines"):
        mme.load(root)
    (root / "existence" / "a.txt").write_text("q1\tYes\nq2\tMaybe\n")
    with pytest.raises(ValueError, match=r"a.txt:2: expected 'question<TAB>Yes\|No'"):
        mme.load(root)
    with pytest.raises(FileNotFoundError, match="no MME subtask folders"):
        mme.load(tmp_path)


# ---------------------------------------------------------------- MMBench
def _mmbench_tsv(path, rows):
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
    lines = ["\t".join(header)] + ["\t".join(str(r.get(h, "")) for h in header) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


IMAGE = base64.b64encode(_png()).decode()
MMBENCH_ROWS = [
    {"index": 1, "question": "What animal is it?", "A": "dog", "B": "cat", "C": "cow", "D": "hen", "answer": "B",
     "category": "attribute", "l2-category": "fine", "image": IMAGE},
    {"index": 2, "question": "How many?", "hint": "Count them.", "A": "two", "B": "three", "answer": "A",
     "category": "count", "l2-category": "coarse", "image": "1"},  # image: a reference to row 1's
]


def test_mmbench_circular_evaluation_by_hand(tmp_path):
    questions = mmbench.load(_mmbench_tsv(tmp_path / "MMBench_DEV_EN.tsv", MMBENCH_ROWS))
    by_index = {q.meta["index"]: q for q in questions}
    assert sorted(by_index) == [1, 2, 1_000_001, 1_000_002, 2_000_001, 3_000_001]
    # shift 1 of question 1: A.cat B.cow C.hen D.dog, so "cat" is A
    assert by_index[1_000_001].meta["options"] == {"A": "cat", "B": "cow", "C": "hen", "D": "dog"}
    assert [by_index[1_000_001 * 0 + i].meta["answer"] for i in (1, 1_000_001, 2_000_001, 3_000_001)] \
        == ["B", "A", "D", "C"]
    assert by_index[2].prompt.startswith("Hint: Count them.\nQuestion: How many?\nOptions:\nA. two\nB. three\n")
    script = {1: "B", 1_000_001: "The answer is A.", 2_000_001: "D", 3_000_001: "(C) hen",  # all right
              2: "A", 1_000_002: "A"}  # shift 1 of question 2 wants B: the question fails
    answers = _answer_all(questions, lambda q: script[q.meta["index"]], tmp_path)
    scores = mmbench.score(questions, answers)
    assert scores["circular_accuracy"] == 0.5 and scores["vanilla_accuracy"] == 1.0
    assert scores["by_category"] == {"attribute": 1.0, "count": 0.0}
    assert (scores["questions"], scores["rows"]) == (2, 6)


def test_mmbench_answer_extraction_as_vlmevalkit():
    choices = {"A": "cat", "B": "dog"}
    assert mmbench.extract_choice("A. cat", choices) == "A"
    assert mmbench.extract_choice("B", choices) == "B"
    assert mmbench.extract_choice("I would say a dog", choices) == "B"  # no lone letter; option text
    assert mmbench.extract_choice("A or B", choices) is None  # two letters, no text: a judge would decide
    assert mmbench.extract_choice("Z", choices) == "Z"
    assert mmbench.extract_choice("Cannot determine the answer", choices) == "Z"
    assert mmbench.extract_choice("cats and dogs", choices) is None  # both texts


def test_mmbench_files_with_circular_copies_are_used_as_given(tmp_path):
    rows = [dict(MMBENCH_ROWS[1], index=2, image=IMAGE),
            dict(MMBENCH_ROWS[1], index=1_000_002, A="three", B="two", answer="B", image="2")]
    questions = mmbench.load(_mmbench_tsv(tmp_path / "m.tsv", rows))
    assert sorted(q.meta["index"] for q in questions) == [2, 1_000_002]
    bad = dict(MMBENCH_ROWS[0], answer="E")
    with pytest.raises(ValueError, match=r"bad.tsv:2: answer 'E' is not one of the options"):
        mmbench.load(_mmbench_tsv(tmp_path / "bad.tsv", [bad]))


# ---------------------------------------------------------------- MMMU
def _mmmu_folder(root, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    by_subject = {}
    for row in rows:
        by_subject.setdefault(row["id"].split("_")[1], []).append(row)
    for subject, items in by_subject.items():
        (root / subject).mkdir(parents=True)
        columns = {k: [r[k] for r in items] for k in ("id", "question", "options", "answer", "question_type")}
        columns["image_1"] = pa.array([{"bytes": _png(), "path": "a.png"} for _ in items], image)
        columns["image_2"] = pa.array([None for _ in items], image)
        pq.write_table(pa.table(columns), root / subject / "validation-00000-of-00001.parquet")
    return root


MMMU_ROWS = [
    {"id": "validation_Art_1", "question": "<image 1> Which colour?", "options": "['red', 'blue', 'green']",
     "answer": "B", "question_type": "multiple-choice"},
    {"id": "validation_Art_2", "question": "<image 1> Which one?", "options": "['1', '2']", "answer": "B",
     "question_type": "multiple-choice"},
    {"id": "validation_Art_4", "question": "<image 1> Pick.", "options": "['x', 'y']", "answer": "B",
     "question_type": "multiple-choice"},
    {"id": "validation_Math_3", "question": "<image 1> Solve.", "options": "[]", "answer": "3.5",
     "question_type": "open"},
]
MMMU_RESPONSES = {"validation_Art_1": "(B) blue", "validation_Art_2": "The answer is C maybe",
                  "validation_Art_4": "A or B, I pick B", "validation_Math_3": "so the result is 3.50"}


def test_mmmu_parsing_and_accuracy_by_hand(tmp_path):
    questions = mmmu.load(_mmmu_folder(tmp_path / "MMMU", MMMU_ROWS))
    art_1 = next(q for q in questions if q.id == "validation_Art_1")
    assert art_1.prompt == ("<image 1> Which colour?\n\n(A) red\n(B) blue\n(C) green\n\n\n"
                            "Answer with the option's letter from the given choices directly.")
    assert len(art_1.images) == 1  # image_2 is empty
    answers = _answer_all(questions, lambda q: MMMU_RESPONSES[q.id], tmp_path)
    parsed = mmmu.parse(questions, answers)
    # Art_2: no letter, 5 words (not > 5): random choice of a Random(42) -> "A" (gold B: wrong);
    # Art_4: " A " and " B " both found: the last mention wins -> B; Math_3: "is " gives "3.50" -> 3.5
    assert parsed["validation_Art_1"] == "B" and parsed["validation_Art_2"] == "A"
    assert parsed["validation_Art_4"] == "B" and 3.5 in parsed["validation_Math_3"]
    scores = mmmu.score(questions, answers)
    assert scores["accuracy"] == 0.75
    assert scores["by_subject"] == {"Art": pytest.approx(2 / 3), "Math": 1.0}
    mmmu.write_official(tmp_path / "out", questions, answers)
    output = json.loads((tmp_path / "out" / "mmmu_output.json").read_text())
    assert output["validation_Art_1"] == "B" and output["validation_Math_3"] == "so the result is 3.50"


def test_mmmu_open_answers_follow_the_official_rules():
    assert mmmu.eval_open("1,000", mmmu.parse_open_response("The total is 1000."))
    assert mmmu.eval_open("paris", mmmu.parse_open_response("I believe the answer is Paris"))
    assert not mmmu.eval_open("3.5", mmmu.parse_open_response("It is 3.6"))
    assert mmmu.eval_open(["2", "two"], mmmu.parse_open_response("two"))


def test_mmmu_bad_rows(tmp_path):
    bad = dict(MMMU_ROWS[0], options="not a list")
    with pytest.raises(ValueError, match=r"row 0: \"options\" is not a list literal"):
        mmmu.load(_mmmu_folder(tmp_path / "M", [bad]))
    with pytest.raises(FileNotFoundError, match="no dev-"):
        mmmu.load(tmp_path / "M", split="dev")


# ---------------------------------------------------------------- POPE
def _pope_folder(root, splits):
    root.mkdir()
    for split, rows in splits.items():
        lines = []
        for i, (label, _) in enumerate(rows, start=1):
            image = f"COCO_val2014_{split}{i}.jpg"
            Image.new("RGB", (16, 16), "white").save(root / image)
            lines.append(json.dumps({"question_id": i, "image": image, "text": f"Is there a {split} thing {i}?",
                                     "label": label}))
        (root / f"coco_pope_{split}.json").write_text("\n".join(lines) + "\n")
    return root


POPE_SPLITS = {"random": [("yes", "Yes, there is."), ("no", "No."), ("yes", "There is not a dog"), ("no", "yes")],
               "popular": [("yes", "Yes"), ("yes", "Nope"), ("no", "I don't know. No")]}


def test_pope_metrics_by_hand(tmp_path):
    questions = pope.load(_pope_folder(tmp_path / "POPE", POPE_SPLITS))
    responses = {f"coco_pope_{s}/{i}": r for s, rows in POPE_SPLITS.items() for i, (_, r) in enumerate(rows, 1)}
    answers = _answer_all(questions, lambda q: responses[q.id], tmp_path)
    scores = pope.score(questions, answers)
    random_split = scores["by_split"]["coco_pope_random"]
    # preds yes,no,no,yes vs labels yes,no,yes,no: TP=TN=FP=FN=1
    assert {k: random_split[k] for k in ("tp", "fp", "tn", "fn")} == {"tp": 1, "fp": 1, "tn": 1, "fn": 1}
    assert [random_split[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")] == [0.5] * 5
    popular = scores["by_split"]["coco_pope_popular"]
    # "Nope" is not "No"; "I don't know. No" keeps only its first sentence: all yes -> TP=2, FP=1
    assert popular["precision"] == pytest.approx(2 / 3) and popular["recall"] == 1.0
    assert popular["f1"] == pytest.approx(0.8) and popular["yes_ratio"] == 1.0
    assert scores["f1_mean"] == pytest.approx(0.65)
    assert scores["accuracy_mean"] == pytest.approx((0.5 + 2 / 3) / 2)
    pope.write_official(tmp_path / "out", questions, answers)
    lines = (tmp_path / "out" / "pope" / "coco_pope_random_answers.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"question_id": 1, "question": "Is there a random thing 1?",
                                    "answer": "Yes, there is."}


def test_pope_bad_label_is_named(tmp_path):
    root = _pope_folder(tmp_path / "POPE", {"random": [("maybe", "")]})
    with pytest.raises(ValueError, match=r"coco_pope_random.json:1: \"label\" must be 'yes' or 'no'"):
        pope.load(root)


# ---------------------------------------------------------------- answering, resuming, the command
def test_answer_log_resumes_and_drops_a_torn_line(tmp_path):
    questions = pope.load(_pope_folder(tmp_path / "POPE", POPE_SPLITS))
    log = AnswerLog(tmp_path / "answers.jsonl")
    first = ScriptedModel({q.prompt: "yes" for q in questions})
    runner.answer_questions(first, questions[:3], log, batch_size=2)
    with open(log.path, "a") as f:
        f.write('{"id": "coco_pope_random/4", "ans')  # a run killed mid-write
    second = ScriptedModel({q.prompt: "no" for q in questions})
    summary = runner.answer_questions(second, questions, log, batch_size=2)
    assert summary == {"items": 7, "done": 4, "skipped": 3, "failed": 0}
    answers = log.read()
    # the popular split (first file) was answered before the kill; the torn line is asked again
    assert len(answers) == 7 and answers["coco_pope_popular/3"] == "yes" and answers["coco_pope_random/4"] == "no"


@pytest.mark.parametrize("benchmark", ["mme", "mmbench", "mmmu", "pope"])
def test_understand_command_on_the_tiny_model(tmp_path, benchmark):
    data = {"mme": lambda: _mme_folder(tmp_path / "MME"),
            "mmbench": lambda: _mmbench_tsv(tmp_path / "MMBench_DEV_EN.tsv", MMBENCH_ROWS[:1]),
            "mmmu": lambda: _mmmu_folder(tmp_path / "MMMU", MMMU_ROWS[:1] + MMMU_ROWS[3:]),
            "pope": lambda: _pope_folder(tmp_path / "POPE", {"random": POPE_SPLITS["random"][:2]})}[benchmark]()
    out = tmp_path / "out"
    args = ["eval", "understand", "--benchmark", benchmark, "--data", str(data), "--out", str(out),
            "--model", "tiny", "--max-new-tokens", "4", "--batch-size", "2"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["benchmark"] == benchmark and results["model"] == "tiny" and results["git_sha"]
    answers = (out / "answers.jsonl").read_text()
    assert main(args + ["--score-only"]) == 0  # rescoring reads the same answers back
    assert json.loads((out / "results.json").read_text())["scores"] == results["scores"]
    assert (out / "answers.jsonl").read_text() == answers


def test_understand_command_reports_bad_data_in_one_line(tmp_path, capsys):
    assert main(["eval", "understand", "--benchmark", "pope", "--data", str(tmp_path / "none"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "POPE folder not found" in capsys.readouterr().err
    (tmp_path / "o").mkdir()
    assert main(["eval", "understand", "--benchmark", "mme", "--data", str(_mme_folder(tmp_path / "MME")),
                 "--out", str(tmp_path / "o"), "--score-only"]) == 2
    assert "have no answer" in capsys.readouterr().err
