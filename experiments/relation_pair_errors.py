"""Relation errors by the kind of pair asked about, from `nexusgen eval shapes` output folders.

    python experiments/relation_pair_errors.py EVAL_DIR [EVAL_DIR ...]

Reads each folder's `eval_set.json` (the items) and `samples.jsonl` (the model's answers) and counts the
in-distribution English relation questions, and how many were answered wrong, by whether the two objects
share a colour, a shape, or neither (read off the canonical references in the item's `comparison`). Prints
JSON, per folder and summed (docs/training-log.md, sixteenth session).
"""

import argparse
import json
import re
from collections import Counter
from pathlib import Path

REFERENCE = re.compile(r"[Tt]he (\w+) (\w+) is in")  # "The red circle is in column 2 and ..."


def pair_kind(comparison: str) -> str:
    (color_a, shape_a), (color_b, shape_b) = REFERENCE.findall(comparison)
    return "colour" if color_a == color_b else "shape" if shape_a == shape_b else "neither"


def count(folder: Path) -> tuple[Counter, Counter]:
    items = json.loads((folder / "eval_set.json").read_text())["items"]["understanding"]
    lines = (folder / "samples.jsonl").read_text().splitlines()
    answers = [r for r in map(json.loads, lines) if r["task"] == "understanding"]
    asked, wrong = Counter(), Counter()
    for item, answer in zip(items, answers, strict=True):
        if item["question"] != answer["question"]:
            raise SystemExit(f"{folder}: samples.jsonl does not follow eval_set.json")
        if item["qtype"] == "relation" and item["lang"] == "en" and not item["compositional"]:
            kind = pair_kind(item["comparison"])
            asked[kind] += 1
            wrong[kind] += not answer["correct"]
    return asked, wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    args = parser.parse_args()
    report, total_asked, total_wrong = {}, Counter(), Counter()
    for folder in args.folders:
        asked, wrong = count(folder)
        report[str(folder)] = {k: {"asked": asked[k], "wrong": wrong[k]} for k in sorted(asked)}
        total_asked.update(asked)
        total_wrong.update(wrong)
    report["all"] = {k: {"asked": total_asked[k], "wrong": total_wrong[k],
                         "wrong_fraction": total_wrong[k] / total_asked[k]} for k in sorted(total_asked)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
