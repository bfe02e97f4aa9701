"""The code paths that only a GPU takes (run by `scripts/gpu_oneshot.sh`; excluded from the CPU suite by the
`gpu` marker): pinned, asynchronous residency moves and prefetch, fp8 storage and the bundled model on CUDA."""

import pytest
import torch

from nexusgen.pipelines.residency import Residency

pytestmark = pytest.mark.gpu


def test_residency_on_cuda_pins_host_copies_and_prefetches():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(1024, 1024), torch.nn.Linear(1024, 1024)
    expected = a.weight.detach().clone()
    residency = Residency("cuda", "model")
    residency.activate("a", a)
    assert a.weight.is_cuda
    residency.activate("b", b)  # a leaves: its host copy is pinned, b arrives
    assert not a.weight.is_cuda and a.weight.is_pinned() and b.weight.is_cuda
    residency.activate("a", a)  # back in by an asynchronous copy from pinned memory
    assert torch.equal(a.weight.cpu(), expected)
    auto = Residency("cuda", "auto")
    c, d = torch.nn.Linear(256, 256), torch.nn.Linear(256, 256)
    auto.activate("c", c)
    assert auto.prefetch("d", d)  # fits next to c: copied on a side stream
    x = torch.randn(4, 256, device="cuda")
    out = auto.activate("d", d)(x)  # waits for the copy
    torch.testing.assert_close(out.cpu(), torch.nn.functional.linear(x.cpu(), d.weight.detach().cpu(),
                                                                       d.bias.detach().cpu()), rtol=1e-4, atol=1e-4)


def test_bundled_model_on_cuda_matches_the_cpu_and_fp8_runs():
    from nexusgen.api import NexusGen

    cpu = NexusGen.from_pretrained("shapes-mini", device="cpu", progress=False)
    gpu = NexusGen.from_pretrained("shapes-mini", device="cuda", dtype="float32", progress=False)
    prompts = ["a red circle left of a blue square", "two squares"]
    torch.testing.assert_close(gpu.predict_image_embeds(prompts), cpu.predict_image_embeds(prompts),
                               rtol=1e-3, atol=1e-3)
    fp8 = NexusGen.from_pretrained("shapes-mini", device="cuda", dtype="bfloat16", fp8=True, progress=False)
    assert fp8.generate("a red circle").size == (64, 64)
    assert fp8.runtime.residency.report()["resident"]  # parts on the card, kept there (auto)
