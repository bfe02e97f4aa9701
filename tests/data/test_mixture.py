"""MixtureSampler: seeded weights, epochs without replacement, world-size-invariant batches, exact resume."""

import json

import numpy as np
import pytest
from PIL import Image

from nexusgen.data.messages import MessageDataset
from nexusgen.data.mixture import MixtureSampler
from nexusgen.data.synthetic import SyntheticSource


class Records:
    """A plain map-style source (the Source protocol is generic: anything with len and getitem)."""

    def __init__(self, name, n):
        self.name, self.n = name, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return {"id": f"{self.name}{i}"}


def _ids(sampler, batch_size, steps, rank=0, world_size=1):
    it = sampler.iter_batches(batch_size, rank, world_size)
    return [[s["id"] for s in next(it)] for _ in range(steps)]


def _three():
    return [Records("u", 7), Records("g", 5), Records("e", 3)]


def test_same_seed_same_stream_other_seed_other_stream():
    a = _ids(MixtureSampler(_three(), [2, 1, 1], seed=3), 8, 6)
    b = _ids(MixtureSampler(_three(), [2, 1, 1], seed=3), 8, 6)
    c = _ids(MixtureSampler(_three(), [2, 1, 1], seed=4), 8, 6)
    assert a == b and a != c


@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_global_batches_do_not_depend_on_world_size(world_size):
    reference = _ids(MixtureSampler(_three(), [2, 1, 1], seed=0), 8, 5)
    per_rank = [_ids(MixtureSampler(_three(), [2, 1, 1], seed=0), 8, 5, r, world_size)
                for r in range(world_size)]
    for step in range(5):
        assert sum((per_rank[r][step] for r in range(world_size)), []) == reference[step]
        assert all(len(per_rank[r][step]) == 8 // world_size for r in range(world_size))


def test_resume_sees_the_same_samples_as_an_uninterrupted_run():
    uninterrupted = _ids(MixtureSampler(_three(), [2, 1, 1], seed=5), 6, 9)
    first = MixtureSampler(_three(), [2, 1, 1], seed=5)
    head = _ids(first, 6, 4)
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints store it as JSON
    resumed = MixtureSampler(_three(), [2, 1, 1], seed=5)
    resumed.load_state_dict(state)
    assert head + _ids(resumed, 6, 5) == uninterrupted
    assert resumed.batches_done == 9


def test_each_epoch_reads_every_record_once_in_a_fresh_order():
    sampler = MixtureSampler([Records("x", 10)], seed=1)
    ids = sum(_ids(sampler, 5, 6), [])
    epochs = [ids[k:k + 10] for k in (0, 10, 20)]
    assert all(sorted(e) == sorted(f"x{i}" for i in range(10)) for e in epochs)
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    assert sampler.epochs() == [3.0]
    ordered = MixtureSampler([Records("x", 4)], seed=1, shuffle=False)
    assert sum(_ids(ordered, 2, 3), []) == ["x0", "x1", "x2", "x3", "x0", "x1"]


def test_weights_set_the_proportions():
    sampler = MixtureSampler([Records("a", 50), Records("b", 50), Records("z", 50)], [3, 1, 0], seed=0)
    ids = sum(_ids(sampler, 100, 40), [])
    n = len(ids)
    frac_a = sum(i.startswith("a") for i in ids) / n
    # Binomial(4000, 0.75): sd = 0.0068; allow 4 sd.
    assert abs(frac_a - 0.75) < 4 * np.sqrt(0.75 * 0.25 / n)
    assert not any(i.startswith("z") for i in ids)


def test_bad_arguments_and_foreign_state_are_rejected():
    with pytest.raises(ValueError, match="2 weights for 3 sources"):
        MixtureSampler(_three(), [1, 1])
    with pytest.raises(ValueError, match="not all 0"):
        MixtureSampler(_three(), [0, 0, 0])
    with pytest.raises(ValueError, match="at least one source"):
        MixtureSampler([])
    sampler = MixtureSampler(_three())
    with pytest.raises(ValueError, match="not divisible by world_size 3"):
        next(sampler.iter_batches(8, 0, 3))
    with pytest.raises(ValueError, match="rank"):
        next(sampler.iter_batches(8, 2, 2))
    other = MixtureSampler([Records("u", 8), Records("g", 5), Records("e", 3)])
    with pytest.raises(ValueError, match="lengths is .* in the checkpoint"):
        other.load_state_dict(sampler.state_dict())


def test_mixture_of_files_and_synthetic_counts_bad_records(tmp_path):
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "a.png")
    good = {"images": ["a.png"], "messages": [{"role": "user", "content": "<image> q"},
                                              {"role": "assistant", "content": "a"}]}
    lines = [json.dumps({**good, "id": f"f{i}"}) for i in range(4)] + ["{broken"]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    files = MessageDataset(tmp_path / "d.jsonl", skip_bad=True)
    sampler = MixtureSampler([files, SyntheticSource(6, seed=0, image_size=16)], [1, 1], seed=0)
    batch = next(sampler.iter_batches(8))
    assert {s["task"] for s in batch} <= {"understand", "generate", "edit"}
    assert all(isinstance(im, Image.Image) for s in batch for im in s["images"])
    assert sampler.bad_counts() == {"bad_json": 1}
