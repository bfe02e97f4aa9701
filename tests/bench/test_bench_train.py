"""`nexusgen bench train`: peak and step FLOPs are measured and counted; the report has every stage."""


import torch

from nexusgen.bench import train as bench
from nexusgen.recipes import get_recipe
from nexusgen.train.config import apply_overrides


def test_matmul_peak_is_positive_and_names_its_size():
    peak = bench.measure_matmul_peak(torch.device("cpu"), sizes=(128,), repeats=2)
    assert peak["flops_per_s"] > 1e8 and peak["n"] == 128 and peak["dtype"] == "float32"


def test_bench_stage_counts_the_flops_of_a_training_step():
    config = apply_overrides(get_recipe("tiny-vae"), ["progress=false", "data.num_samples=8"])
    result = bench.bench_stage(config, steps=1, warmup=0)
    assert result["flops_per_s"] > 0 and result["images_per_s"] > 0
    # a VAE step is convolutions: forward + backward is about 3x the forward's 2 * MACs; at least 1e8
    assert result["flops_per_step"] > 1e8
    assert result["params"] == result["trainable_params"] == 258379


def test_run_reports_every_stage_and_the_goal(monkeypatch):
    calls = []

    def fake_bench(config, *, steps, warmup=2):
        calls.append((config.stage.name, config.stage.preset))
        return {"flops_per_s": 1e9, "step_s": 0.1}

    monkeypatch.setattr(bench, "bench_stage", fake_bench)
    monkeypatch.setattr(bench, "measure_matmul_peak", lambda *a, **k: {"flops_per_s": 4e9})
    report = bench.run(quick=True)
    assert len(calls) == 10 and ("ar", "mid") in calls
    assert report["stages"]["ar/mid"]["fraction_of_peak"] == 0.25
