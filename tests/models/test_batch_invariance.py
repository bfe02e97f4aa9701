"""`items_apart`: short per-item inputs of a Linear are computed item by item (bit for bit what a batch of one
computes), tall ones stay batched, and the layers get their own forward back afterwards."""

import torch
from torch import nn

from nexusgen.models.batch_invariance import SHARED_ROWS, items_apart


def test_short_inputs_give_each_item_exactly_its_value_alone():
    torch.manual_seed(0)
    layer = nn.Linear(1024, 256)
    items = 3
    x = torch.randn(2 * items, 1024)  # 2 branches x 3 items, branch-major, as the CFG sampler stacks them
    with items_apart([layer], items):
        together = layer(x)
    for b in range(items):
        alone = layer(x[b::items].contiguous())
        assert torch.equal(together[b::items], alone)


def test_tall_inputs_and_a_batch_of_one_go_through_the_layer_unchanged(monkeypatch):
    layer = nn.Linear(64, 8)
    seen = []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.modules.linear.F, "linear", lambda x, *a: seen.append(x.shape) or linear(x, *a))
    with items_apart([layer], 2):
        layer(torch.randn(2, SHARED_ROWS, 64))  # 12 rows per item: batched, one call
        layer(torch.randn(4, 64))  # 2 rows per item: one call per item
    with items_apart([layer], 1):
        layer(torch.randn(1, 64))
    assert seen == [torch.Size([2, SHARED_ROWS, 64]), torch.Size([2, 64]), torch.Size([2, 64]), torch.Size([1, 64])]
    assert "forward" not in vars(layer)  # the class's forward again


def test_skipped_subtrees_are_left_alone():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    with items_apart([model], 2, skip=[model[1]]):
        assert "forward" in vars(model[0]) and "forward" not in vars(model[1])
    assert "forward" not in vars(model[0])
