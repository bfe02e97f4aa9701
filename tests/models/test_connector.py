"""Adapter and embedding merger: official key layouts, lattice positions, parity with upstream's maths."""

import torch
import torch.nn.functional as F

from nexusgen.models.connector import EmbeddingMerger, GenerationAdapter, MergerConfig, lattice_position_ids
from nexusgen.models.decoder import DECODER_PRESETS

OFFICIAL_MERGER_KEYS = {
    "layers.0.self_attn.q_proj.weight", "layers.0.self_attn.q_proj.bias", "layers.0.self_attn.k_proj.weight",
    "layers.0.self_attn.k_proj.bias", "layers.0.self_attn.v_proj.weight", "layers.0.self_attn.v_proj.bias",
    "layers.0.self_attn.o_proj.weight", "layers.0.mlp.gate_proj.weight", "layers.0.mlp.up_proj.weight",
    "layers.0.mlp.down_proj.weight", "layers.0.input_layernorm.weight",
    "layers.0.post_attention_layernorm.weight", "projector.0.weight", "projector.1.weight",
    "projector.1.bias", "projector.2.weight", "projector.4.weight", "projector.4.bias", "projector.5.weight",
}


def _merger(seed=0):
    torch.manual_seed(seed)
    merger = EmbeddingMerger(DECODER_PRESETS["tiny"].merger).double()
    with torch.no_grad():  # non-trivial norm weights so that a swapped norm would show
        for name, p in merger.named_parameters():
            if "norm" in name or name.startswith("projector.0") or name.startswith("projector.2"):
                p.uniform_(0.5, 1.5)
    return merger


def test_adapter_official_layout():
    adapter = GenerationAdapter(12, 20)
    shapes = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    assert shapes == {"0.weight": (20, 12), "0.bias": (20,), "1.weight": (20,), "1.bias": (20,),
                      "3.weight": (20, 20), "3.bias": (20,), "4.weight": (20,), "4.bias": (20,)}
    assert adapter[1].eps == 1e-5 and isinstance(adapter[2], torch.nn.ReLU)
    assert adapter(torch.randn(2, 5, 12)).shape == (2, 5, 20)


def test_merger_official_layout():
    merger = EmbeddingMerger(DECODER_PRESETS["tiny"].merger)
    assert set(merger.state_dict()) == OFFICIAL_MERGER_KEYS  # RoPE frequencies are not stored, as upstream


def test_lattice_positions_hand_computed():
    target = lattice_position_ids((9, 9))  # 252x252 generation grid: steps of 4
    assert target.shape == (3, 81)
    assert target[0].abs().sum() == 0
    assert target[1].view(9, 9)[:, 0].tolist() == [4.0 * r for r in range(9)]
    assert target[2].view(9, 9)[0].tolist() == [4.0 * c for c in range(9)]
    reference = lattice_position_ids((18, 18))  # 504x504 editing reference: steps of 2
    assert reference[1].view(18, 18)[:, 3].tolist() == [2.0 * r for r in range(18)]
    assert reference[2, :18].tolist() == [2.0 * c for c in range(18)]
    odd = lattice_position_ids((6, 12))  # any grid: rows step 6, columns step 3
    assert odd[1].view(6, 12)[:, 0].tolist() == [6.0 * r for r in range(6)]
    assert odd[2].view(6, 12)[0].tolist() == [3.0 * c for c in range(12)]
    assert abs(lattice_position_ids((5, 7))[2, 1].item() - 36 / 7) < 1e-6  # fractional positions are kept


def _rms(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _upstream_merger(merger, target, reference, target_grid, reference_grid):
    """Upstream's merger maths written out (transformers-4.49 M-RoPE, eager attention, no mask)."""
    cfg, p = merger.config, dict(merger.named_parameters())
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = cfg.embed_dim // heads

    def positions(grid):  # upstream: patch grid (2h, 2w) on a 72-patch base grid
        h, w = grid
        rows = torch.arange(h).view(-1, 1).expand(h, w).flatten() * (72 / (2 * h))
        cols = torch.arange(w).view(1, -1).expand(h, w).flatten() * (72 / (2 * w))
        return torch.stack([torch.zeros(h * w), rows, cols]).double()

    pos = torch.cat([positions(target_grid), positions(reference_grid)], dim=1)  # (3, L)
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    freqs = pos[..., None] * inv_freq  # (3, L, hd/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (3, L, hd)
    sections = list(cfg.mrope_section) * 2
    cos = torch.cat([m[i % 3] for i, m in enumerate(emb.cos().split(sections, dim=-1))], dim=-1)
    sin = torch.cat([m[i % 3] for i, m in enumerate(emb.sin().split(sections, dim=-1))], dim=-1)

    x = torch.cat([target, reference], dim=1)
    B, L, _ = x.shape
    a = "layers.0.self_attn."
    h = _rms(x, p["layers.0.input_layernorm.weight"], cfg.rms_norm_eps)

    def project(name, num_heads):
        out = F.linear(h, p[a + name + ".weight"], p[a + name + ".bias"])
        return out.view(B, L, num_heads, head_dim).transpose(1, 2)

    q, k, v = project("q_proj", heads), project("k_proj", kv_heads), project("v_proj", kv_heads)
    q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    k, v = k.repeat_interleave(heads // kv_heads, dim=1), v.repeat_interleave(heads // kv_heads, dim=1)
    attn = torch.softmax(q @ k.transpose(2, 3) / head_dim**0.5, dim=-1) @ v
    x = x + F.linear(attn.transpose(1, 2).reshape(B, L, -1), p[a + "o_proj.weight"])
    h = _rms(x, p["layers.0.post_attention_layernorm.weight"], cfg.rms_norm_eps)
    m = "layers.0.mlp."
    x = x + F.linear(F.silu(F.linear(h, p[m + "gate_proj.weight"])) * F.linear(h, p[m + "up_proj.weight"]),
                     p[m + "down_proj.weight"])
    x = _rms(x, p["projector.0.weight"], cfg.rms_norm_eps)
    x = F.silu(_rms(F.linear(x, p["projector.1.weight"], p["projector.1.bias"]), p["projector.2.weight"],
                    cfg.rms_norm_eps))
    x = F.linear(x, p["projector.4.weight"], p["projector.4.bias"])
    return _rms(x, p["projector.5.weight"], cfg.rms_norm_eps)


def test_merger_matches_upstream_maths():
    merger = _merger()
    D = merger.config.embed_dim
    for target_grid, reference_grid in [((3, 3), (6, 6)), ((2, 4), (5, 3))]:
        target = torch.randn(2, target_grid[0] * target_grid[1], D, dtype=torch.float64)
        reference = torch.randn(2, reference_grid[0] * reference_grid[1], D, dtype=torch.float64)
        ours = merger(target, reference, target_grid, reference_grid)
        upstream = _upstream_merger(merger, target, reference, target_grid, reference_grid)
        assert ours.shape == (2, target.shape[1] + reference.shape[1], merger.config.context_dim)
        # RoPE angles are computed in float32 in both implementations; structural errors would be O(0.1).
        assert torch.allclose(ours, upstream, atol=2e-6), (ours - upstream).abs().max()


def test_merger_is_bidirectional_and_position_aware():
    merger = _merger(1)
    D = merger.config.embed_dim
    target, reference = torch.randn(1, 4, D, dtype=torch.float64), torch.randn(1, 9, D, dtype=torch.float64)
    out = merger(target, reference, (2, 2), (3, 3))
    changed = reference.clone()
    changed[0, -1] += 1.0  # the last token changes the first token's output: no causal mask
    assert (merger(target, changed, (2, 2), (3, 3))[0, 0] - out[0, 0]).abs().max() > 1e-6
    # the same tokens on another grid get other positions, hence another output
    assert (merger(target, reference, (4, 1), (3, 3)) - out).abs().max() > 1e-6


def test_merger_config_validation():
    import pytest

    with pytest.raises(ValueError):
        MergerConfig(embed_dim=64, context_dim=64, num_attention_heads=2, num_key_value_heads=1,
                     intermediate_size=8, mrope_section=(16, 24, 24))
    merger = EmbeddingMerger(DECODER_PRESETS["tiny"].merger)
    with pytest.raises(ValueError):
        merger(torch.randn(1, 4, 64), torch.randn(1, 8, 64), (2, 2), (3, 3))
