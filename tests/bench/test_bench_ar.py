"""`nexusgen bench ar`: the report's structure on a minimal run (timings themselves are never asserted)."""


from nexusgen.bench import ar


def test_bench_preset_report_structure():
    result = ar.bench_preset("tiny", repeats=1, sequential_repeats=1, batch_sizes=(1, 2),
                             device=ar.torch.device("cpu"))
    assert result["num_output_tokens"] == 16 and result["prompt_tokens"] > 100
    latency = result["latency_ms"]
    assert latency["one_pass"] > 0
    assert abs(latency["speedup"] - latency["sequential"] / latency["one_pass"]) < 1e-9
    assert set(result["throughput_images_per_s"]) == {"batch_1", "batch_2"}
    assert result["one_pass_gflop"] > 0


def test_run_quick_is_json_ready(monkeypatch):
    import json

    monkeypatch.setattr(ar, "matmul_peak_flops", lambda device: 1e11)
    report = ar.run(quick=True)
    json.dumps(report)
    assert report["quick"] and list(report["presets"]) == ["tiny"] and report["statistic"] == "median"
    assert "expectations" not in report  # only judged on the full run (mid preset, N = 81)
