"""`nexusgen bench decoder --quick` runs and reports every number it promises (smoke test)."""

import math

from nexusgen.bench.decoder import run


def test_quick_bench_reports_medians():
    report = run(quick=True)
    tiny = report["presets"]["tiny"]
    for key in ("dit_step_ms_cfg_off", "dit_step_ms_cfg_on", "editing_dit_step_ms", "vae_encode_ms",
                "vae_decode_ms", "dit_step_gflop", "fraction_of_matmul_peak"):
        assert math.isfinite(tiny[key]) and tiny[key] > 0, key
    assert tiny["image_tokens"] == 16 and report["dtype"] == "float32"
    assert tiny["peak_memory"]["peak_rss_mib"] > 0
