"""Batch invariance on the CPU: an item gives the same numbers alone or in a batch.

A batched matrix product gives each row the same value as the product of that row alone only if the
library treats both calls alike. MKL's fp32 GEMM does not for short inputs: it takes a different kernel for
1 row, for 2-3 rows and for 4 or more, and blocks of fewer than 12 rows that are not a multiple of 4 meet
different tail handling, so a row's last bits depend on how many rows share its call (measured with torch
2.13 on the AVX2 development machine: up to 4e-5 apart at K = 1024). Taller blocks (12 rows and more per
item, at every batch up to 8 times that) gave every row bit for bit the value it has alone.

Inside the pipelines, the short inputs are the per-item vectors (the DiT's time, guidance and pooled
embeddings and every modulation derived from them), the AR model's text decoding (one token per item and
step) and the vision head of models with few output tokens. `items_apart` computes exactly those item by
item, in the layout a batch of one has, and leaves the tall ones (sequences of tokens) batched, where the
batching gain is. The other operations the pipelines batch are per row already (normalisations, attention
per item and head, element-wise maths); what is not (convolutions and group norms of the VAE, padded
prompts) the pipelines run per item or per group of equal shape (see `nexusgen.pipelines`).

On a GPU the batched kernels are chosen by shape and differ in their last bits anyway; nothing is split
there, and a batch keeps its speed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

SHARED_ROWS = 12
"""Rows per item from which a Linear's input stays batched (see the module docstring)."""


@contextlib.contextmanager
def items_apart(modules: Iterable[nn.Module], items: int, skip: Iterable[nn.Module] = ()) -> Iterator[None]:
    """Within the block, every `nn.Linear` under `modules` computes short inputs item by item on the CPU
    (layers on a GPU are left as they are, without even a wrapper's call per forward).

    An input's leading dimension holds `branches x items` rows in branch-major order (the sampler runs the
    conditional and the negative branch of classifier-free guidance as [cond_1..cond_B; neg_1..neg_B]), so
    item b owns rows b, b + items, ...: exactly the rows, in the order, that a batch of one holds. Inputs
    with fewer than `SHARED_ROWS` rows per item are computed per item; taller ones, GPU inputs and inputs
    whose leading dimension is not a multiple of `items` go through the layer's own forward unchanged, so
    a batch of one computes what it computed before.

    Args:
        modules: the module trees to patch (e.g. a DiT; never a ViT over packed patches, whose rows are not
            items).
        items: the number of items of the batch.
        skip: sub-trees to leave alone.
    """
    skipped = {id(layer) for tree in skip for layer in tree.modules()}
    patched = []
    if items > 1:
        for module in modules:
            for layer in module.modules():
                if (isinstance(layer, nn.Linear) and layer.weight.device.type == "cpu"  # GPU layers: no wrapper
                        and id(layer) not in skipped and "forward" not in vars(layer)):
                    layer.forward = _per_item(layer.forward, items)
                    patched.append(layer)
    try:
        yield
    finally:
        for layer in patched:
            del layer.forward  # back to the class's forward


def _per_item(forward, items: int):
    def apart(x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0] if x.ndim > 1 else 0
        if x.device.type != "cpu" or rows == 0 or rows % items:
            return forward(x)
        rows_per_item = (rows // items) * (x[0].numel() // x.shape[-1])
        if rows_per_item >= SHARED_ROWS:
            return forward(x)
        parts = [forward(x[b::items].contiguous()) for b in range(items)]
        out = parts[0].new_empty((rows, *parts[0].shape[1:]))
        for b, part in enumerate(parts):
            out[b::items] = part
        return out

    return apart
