"""`nexusgen bench gpu` on the CPU at real widths and one block of depth: every phase runs and reports."""

import json
import math

from nexusgen.cli import main

CPU_RUN = ["bench", "gpu", "--blocks", "1", "--vocab", "272", "--intermediate", "256", "--sizes", "16",
           "--e2e-size", "16", "--e2e-steps", "1", "--negative-tokens", "8", "--edit-image", "56",
           "--decode-tokens", "2", "--repeats", "1", "--warmup", "0"]


def _numbers(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _numbers(value)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield tree


def test_bench_gpu_runs_on_the_cpu_at_real_widths(capsys):
    assert main(CPU_RUN) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device"] == "cpu" and report["dtype"] == "float32" and report["blocks"] == 1
    assert all(math.isfinite(x) for x in _numbers(report))
    parts = report["parts"]
    real = parts["weights_gb_real_depth"]  # counted on the meta device: the real Nexus-GenV2 in bf16
    assert 16.5 < real["autoregressive"] < 16.7 and 23.8 < real["generation_decoder"] < 24.0
    assert 11.8 < real["dit_fp8"] <= 12.5 < real["dit_bf16"]
    moved = parts["bytes_moved_gb_per_request"]  # computed for an 80 GB H100
    assert moved["auto"]["round2"] == {"understand": 0, "generate": 0, "edit": 0, "generate_again": 0}
    ar_and_decoder = real["autoregressive"] + real["generation_decoder"]
    assert math.isclose(moved["model"]["round2"]["generate_again"], ar_and_decoder, rel_tol=1e-9)  # after edit
    assert parts["peak_vram_gb_estimate"]["auto_generate_resident"] < 45
    assert parts["peak_vram_gb_estimate"]["fp8_model_offload_largest_resident"] < 18
    dit = report["dit"]["sizes"]["16"]
    assert dit["step_ms_cfg_t5"] > 0 and dit["step_ms_cfg_off"] > 0 and dit["step_tflop_cfg_off"] > 0
    assert report["dit"]["editing_context_tokens"] == 81 + 4
    assert report["ar"]["decode_tokens_per_s"] > 0 and report["ar"]["edit_prompt_tokens"] > 4
    assert report["e2e"]["generate_s_no_cfg"] > 0 and report["e2e"]["residency"]["policy"] == "auto"
    assert report["fp8"]["dit_weights_gb"] < 0.55 * report["dit"]["weights_gb"]
    for phase in ("peak", "ar", "dit", "vae", "e2e", "fp8"):
        assert report[phase]["peak_memory"]["peak_rss_mib"] > 0
