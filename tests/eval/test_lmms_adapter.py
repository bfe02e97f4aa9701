"""lmms-eval itself runs nexusgen (its registered `--model nexusgen`) on a tiny local task.

Needs the `eval` extra (lmms-eval); deselected by default (marker `lmms_eval`), run by .ci/run in a
second virtual environment: `pytest -m lmms_eval tests/eval/test_lmms_adapter.py`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.lmms_eval

TASK_YAML = """\
task: nexusgen_tiny
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 8
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: answered
    aggregation: mean
    higher_is_better: true
metadata:
  - version: 0.0
"""

TASK_UTILS = """\
from PIL import Image

def doc_to_visual(doc):
    with Image.open(doc["image"]) as im:
        return [im.convert("RGB")]

def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]

def process_results(doc, results):
    return {"answered": float(isinstance(results[0], str))}
"""


def _write_task(folder: Path) -> None:
    rows = []
    for i, color in enumerate(["red", "blue", "green"]):
        image = folder / f"{i}.png"
        Image.new("RGB", (64, 64), color).save(image)
        rows.append({"image": str(image), "question": "How many shapes are there?", "answer": "1"})
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "nexusgen_tiny.yaml").write_text(TASK_YAML.format(data=data))
    (folder / "utils.py").write_text(TASK_UTILS)


def test_lmms_eval_runs_nexusgen_on_a_local_task(tmp_path):
    task = tmp_path / "task"
    task.mkdir()
    _write_task(task)
    out = tmp_path / "logs"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "eval", "--model", "nexusgen", "--model_args", "pretrained=shapes-mini",
         "--tasks", "nexusgen_tiny", "--include_path", str(task), "--batch_size", "2", "--log_samples",
         "--output_path", str(out)],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = list(out.rglob("*results.json"))
    assert results, proc.stdout[-2000:]
    scores = json.loads(results[0].read_text())["results"]["nexusgen_tiny"]
    assert scores["answered,none"] == 1.0
    samples = {}
    for path in out.rglob("*samples_nexusgen_tiny*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            samples[row["doc_id"]] = row["filtered_resps"]
    # lmms-eval's answers are exactly what the public batched API answers for the same images and question
    from nexusgen import NexusGen

    images = [Image.open(task / f"{i}.png").convert("RGB") for i in range(3)]
    expected = NexusGen.from_pretrained("shapes-mini").understand(images, ["How many shapes are there?"] * 3,
                                                                  max_new_tokens=8)
    assert [samples[i] for i in range(3)] == expected
