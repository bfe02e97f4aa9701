"""`nexusgen bench ar --quick` runs and reports every documented key with sane values; the FLOP count
includes the CPU attention; the `mid-qwen` preset matches the real Qwen2.5 tokenizer."""

import json
import math

import torch

from nexusgen.bench import ar, attention_flops, count_flops


def test_quick_report_keys_and_values():
    report = ar.run(quick=True)
    json.dumps(report)
    assert report["threads"] == torch.get_num_threads() >= 1
    assert isinstance(report["omp_wait_policy"], str) and report["statistic"] == "median"
    assert report["matmul_peak_gflop_per_s"] > 0 and "expectations" not in report
    tiny = report["presets"]["tiny"]
    assert tiny["num_output_tokens"] == 16 and tiny["prompt_tokens"] > 0 and tiny["params"] > 0
    latency = tiny["latency_ms"]
    assert 0 < latency["one_pass"] and 0 < latency["sequential"]
    assert math.isclose(latency["speedup"], latency["sequential"] / latency["one_pass"])
    assert set(tiny["throughput_images_per_s"]) == set(tiny["batch_flops"]) == {"batch_1", "batch_4"}
    assert all(v > 0 for v in tiny["throughput_images_per_s"].values())
    flops = tiny["batch_flops"]
    assert math.isclose(flops["batch_1"]["gflop"], tiny["one_pass_gflop"])
    assert flops["batch_4"]["gflop"] >= 4 * flops["batch_1"]["gflop"] * 0.99  # padding only adds work
    assert 0 < tiny["one_pass_fraction_of_peak"]
    assert math.isclose(tiny["batch16_over_batch1_bound"], 1 / tiny["one_pass_fraction_of_peak"])


def test_flop_count_includes_causal_attention():
    q = torch.randn(2, 4, 10, 16)
    k = v = torch.randn(2, 4, 10, 16)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    assert count_flops(lambda: sdpa(q, k, v, is_causal=True)) == 4 * 2 * 4 * 16 * (10 * 11 // 2)
    assert count_flops(lambda: sdpa(q, k, v)) == 4 * 2 * 4 * 16 * 10 * 10  # unmasked (the DiT): every pair
    assert attention_flops((1, 1, 1, 8), (1, 1, 5, 8), None, 0.0, True) == 4 * 8 * 5  # one query, 5 keys


def test_mid_qwen_preset_matches_the_qwen_tokenizer():
    from nexusgen.models.autoregressive import ARConfig, NexusGenARModel
    from nexusgen.processing import check_special_token_ids
    from nexusgen.processing.tokenizers import build_tokenizer

    config = ARConfig.from_preset("mid-qwen")
    mid = ARConfig.from_preset("mid")
    assert (config.num_output_tokens, config.output_image_px) == (81, (252, 252))
    assert config.hidden_size == mid.hidden_size and config.tokenizer == "qwen2.5"
    check_special_token_ids(build_tokenizer("qwen2.5"), config.qwen_config)
    with torch.device("meta"):
        model = NexusGenARModel(config)
    embeddings = 2 * config.qwen_config.text_config.vocab_size * config.hidden_size
    assert 3e6 < sum(p.numel() for p in model.parameters()) - embeddings < 8e6  # mid's body
