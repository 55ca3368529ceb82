"""3D sine positional encoding of feature-map voxels.

Each of the three array axes gets ``channels // 3`` (rounded down to an even number) sine/cosine features of its
NORMALISED voxel-centre coordinate ``u = (v + 0.5) / n`` in ``[0, 1]`` (the voxel-edge box convention of
:mod:`organdetr.config`). The frequencies are geometric between one period over the whole volume and
``max_periods`` periods. Because the coordinate is normalised, a fine-level voxel and the coarse voxel covering the
same region get nearly the same code; this is what lets the inter-scale cross-attention of the MSA encoder and the
deformable encoder relate positions across pyramid levels. Channels left over after the three axes are zero.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Highest frequency in periods per volume: finer than any pyramid level we use needs (64 voxels per axis -> 32).
DEFAULT_MAX_PERIODS = 32.0


def sine_position_encoding_3d(
    shape: tuple[int, int, int],
    channels: int,
    *,
    max_periods: float = DEFAULT_MAX_PERIODS,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Sine positional encoding of a ``(d0, d1, d2)`` grid as ``[d0 * d1 * d2, channels]``.

    Tokens are in row-major order of the grid (axis 2 fastest), matching ``tensor.flatten(2)`` of a
    ``[B, C, d0, d1, d2]`` map. Feature blocks are ``[sin, cos]`` of axis 0, then axis 1, then axis 2.
    """
    per_axis = (channels // 3) // 2 * 2
    if per_axis == 0:
        raise ValueError(f"a 3D sine encoding needs at least 6 channels, got {channels}")
    num_freq = per_axis // 2
    exponents = torch.arange(num_freq, device=device, dtype=torch.float64) / max(num_freq - 1, 1)
    freqs = 2.0 * math.pi * max_periods**exponents
    axis_codes = []
    for size in shape:
        coords = (torch.arange(size, device=device, dtype=torch.float64) + 0.5) / size
        angles = coords[:, None] * freqs[None, :]
        axis_codes.append(torch.cat([angles.sin(), angles.cos()], dim=1))
    grids = torch.meshgrid(*(torch.arange(size, device=device) for size in shape), indexing="ij")
    encoding = torch.cat([code[grid.reshape(-1)] for code, grid in zip(axis_codes, grids, strict=True)], dim=1)
    encoding = torch.nn.functional.pad(encoding, (0, channels - encoding.shape[1]))
    return encoding.to(dtype)
