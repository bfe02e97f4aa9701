"""Residency policies: the decisions from byte counts alone, and the moves carried out on real modules (the
meta device stands in for the GPU: moves and their bookkeeping, no copies)."""

import pytest
import torch

from nexusgen.pipelines.residency import (
    Residency,
    ResidencyPlanner,
    bytes_moved_per_request,
    check_policy,
)

GB = 10**9
REAL = {"autoregressive": 16_610_604_704, "generation_decoder": 23_865_781_888,  # Nexus-GenV2 in bf16,
        "editing_decoder": 24_520_681_600, "vae": 167_639_366}                   # counted on the meta device
H100 = 81559 * 2**20 - 81559 * 2**20 // 10
GENERATE = ["autoregressive", "generation_decoder", "vae"]
EDIT = ["autoregressive", "editing_decoder", "vae"]


def test_auto_keeps_what_fits_and_evicts_least_recently_used_only_as_needed():
    planner = ResidencyPlanner("auto", capacity_bytes=10)
    assert planner.activate("a", 4).evict == [] and planner.activate("b", 4).evict == []
    assert planner.plan("a", 4).move_in is False  # resident: nothing to do
    planner.activate("a", 4)  # a is now the most recently used
    plan = planner.activate("c", 4)  # 12 > 10: one part must go, the least recently used (b)
    assert plan.evict == ["b"] and list(planner.resident) == ["a", "c"]
    assert planner.activate("d", 9).evict == ["a", "c"]  # as many as needed
    assert planner.fits(1) and not planner.fits(2)


def test_model_policy_moves_whole_models_and_none_never_evicts():
    model = ResidencyPlanner("model", capacity_bytes=100)
    model.activate("vae", 1, permanent=True)
    model.activate("a", 4)
    assert model.activate("b", 4).evict == ["a"]  # one big part at a time, however much room there is
    assert "vae" in model.resident  # small permanent parts stay
    none = ResidencyPlanner("none", capacity_bytes=5)
    none.activate("a", 4)
    assert none.activate("b", 4).evict == [] and list(none.resident) == ["a", "b"]  # over capacity: OOM is yours
    with pytest.raises(ValueError, match="offload must be one of"):
        check_policy("sometimes")


def test_bytes_moved_per_request_at_real_size():
    """Computed for an 80 GB H100: generate's AR + decoder + VAE (40.6 GB) fit, so `auto` moves nothing after
    the first requests; `model` moves the 40.5 GB of AR + decoder in again for every generate."""
    sequence = [GENERATE, EDIT, GENERATE]
    auto = bytes_moved_per_request("auto", H100, REAL, sequence)
    assert auto[:3] == [sum(REAL[k] for k in GENERATE), REAL["editing_decoder"], 0] and auto[3:] == [0, 0, 0]
    model = bytes_moved_per_request("model", H100, REAL, sequence)
    assert model[3:] == [REAL["autoregressive"] + REAL["generation_decoder"],
                         REAL["autoregressive"] + REAL["editing_decoder"],
                         REAL["autoregressive"] + REAL["generation_decoder"]]
    small = bytes_moved_per_request("auto", 45 * GB, REAL, sequence)  # a 48 GB card: both decoders do not fit,
    gen, edit = REAL["generation_decoder"], REAL["editing_decoder"]    # the AR model stays, the decoders swap
    assert small == [sum(REAL[k] for k in GENERATE), edit, gen, 0, edit, gen]


def _linear(seed):
    torch.manual_seed(seed)
    return torch.nn.Linear(4, 4)


def test_moves_on_a_device_keep_host_tensors_and_copy_nothing_back():
    a, b = _linear(0), _linear(1)
    host_a = a.weight.data_ptr()
    residency = Residency("meta", "model", capacity_bytes=10**6)
    residency.activate("a", a)
    assert a.weight.device.type == "meta" and residency.planner.moved_in_bytes == 80
    residency.activate("b", b)  # model policy: a leaves; its parameters point at the kept host tensor again
    assert a.weight.data_ptr() == host_a and b.weight.device.type == "meta"  # the same memory, no copy
    residency.activate("a", a)
    assert residency.planner.moved_in_bytes == 240
    assert [(m[0], m[1]) for m in residency.planner.moves] == [("in", "a"), ("out", "a"), ("in", "b"),
                                                               ("out", "b"), ("in", "a")]


def test_auto_prefetches_what_fits_and_parts_built_on_the_device_join_without_a_copy():
    a, b = _linear(0), _linear(1)
    residency = Residency("meta", "auto", capacity_bytes=200)
    residency.activate("a", a)
    assert residency.prefetch("b", b) and b.weight.device.type == "meta"  # 80 + 80 <= 200
    c = _linear(2)
    assert not residency.prefetch("c", c) and c.weight.device.type == "cpu"  # would need an eviction
    built = _linear(3).to("meta")
    residency.activate("built", built)  # already there: joins, nothing moved (and nothing evicted yet)
    assert residency.planner.moves[-1] == ("joined", "built", 80) and residency.planner.moved_in_bytes == 160


def test_nothing_moves_when_the_device_is_the_host():
    a = _linear(0)
    a.to = None  # would raise if anything walked the module
    residency = Residency("cpu", "model")
    assert residency.activate("a", a) is a and residency.report()["bytes_moved_in"] == 0
