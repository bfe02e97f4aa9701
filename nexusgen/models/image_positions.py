"""Absolute places of input image tokens, added to the LLM's inputs (an option, not in Nexus-Gen).

Qwen2.5-VL's M-RoPE gives the column axis the lowest rotary frequencies of each head: at rope_theta 1e6
one column turns a query against a key by under 2e-4 rad, so the LLM can hardly tell an input image's
columns apart, and its ViT (2-D RoPE, relative only) does not write absolute places into the tokens
(training/shapes-mini/README.md measures what that costs). `InputImagePositions` adds, to every *input*
image token, a learnt linear map of Fourier features of the token's normalised (row, column) centre, in
units of the token's own RMS (`NexusGenARModel.with_input_positions`). The map starts at zero, so a
trained model gains the module without changing any output; normalised coordinates give tokens of a 4x4
and an 8x8 grid at the same place the same features, which is what an edit needs (output token k finds
the source tokens at its place). Generated images need nothing: the prefill table already holds one
learnt input per output place. On shapes-mini it has not paid off yet: scores within seed noise of the same
training without it, relations still at chance (training/shapes-mini/README.md, sixth session).
"""

from __future__ import annotations

import math

import torch
from torch import nn

NUM_FREQUENCIES = 4  # pi .. 8 pi: the finest still turns by at most pi per token of an 8-token axis


def place_features(grids: torch.Tensor, merge_size: int) -> torch.Tensor:
    """Fourier features of every LLM token's normalised centre, images in order, tokens in raster order.

    Args:
        grids: (I, 3) patch grids (t, h, w), as `image_grid_thw`.
        merge_size: the ViT's spatial merge (LLM token = merge x merge patches).

    Returns:
        (T, 4 * NUM_FREQUENCIES) float32: sin and cos of pi 2^k u for u = row, then column centre in (0, 1).
    """
    freqs = math.pi * 2.0 ** torch.arange(NUM_FREQUENCIES, dtype=torch.float32, device=grids.device)
    rows = []
    for t, h, w in grids.tolist():
        h, w = h // merge_size, w // merge_size
        y = (torch.arange(h, dtype=torch.float32, device=grids.device) + 0.5) / h
        x = (torch.arange(w, dtype=torch.float32, device=grids.device) + 0.5) / w
        y, x = torch.meshgrid(y, x, indexing="ij")
        angles = torch.cat([y.reshape(-1, 1) * freqs, x.reshape(-1, 1) * freqs], dim=1)  # (h * w, 2K)
        rows.append(torch.cat([angles.sin(), angles.cos()], dim=1).repeat(t, 1))
    return torch.cat(rows)


class InputImagePositions(nn.Module):
    """(I, 3) grids -> (T, D) place embeddings of their tokens; zero at initialisation."""

    def __init__(self, dim: int, merge_size: int):
        super().__init__()
        self.merge_size = merge_size
        self.proj = nn.Linear(4 * NUM_FREQUENCIES, dim, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, grids: torch.Tensor) -> torch.Tensor:
        features = place_features(grids, self.merge_size)
        return self.proj(features.to(self.proj.weight.dtype))
