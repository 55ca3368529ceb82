"""A 3x3x3 convolution of a x2 trilinear upsampling joined with finer features, computed on the coarse grid.

The segmentation branch twice upsamples features x2 (trilinear, ``align_corners=False``), joins finer features or the
image and convolves the result (3x3x3, zero padding): :func:`upsampled_convolution`. Both steps are linear, so each of
the 8 fine voxels of a coarse voxel is a 3x3x3 convolution of the COARSE features with a kernel of its own (the
interpolation weights, 1/4 and 3/4 per axis, folded into the weights) and of the finer part's 8 voxels per coarse
voxel (``pixel unshuffle``): one convolution on the coarse grid with 8x the output channels, then a ``pixel shuffle``.
That skips the upsampled tensor, its copy into the joined input and a few-channel convolution on the fine grid, where
oneDNN is slow (the chest CT's fine stage and ``to_half`` alone: ~310 -> ~180 ms on 2 threads).

It is exact, borders included. The upsampling clamps at the grid's border and the convolution pads the fine grid with
zeros: the coarse convolution reads the coarse features padded by replication (which reproduces the clamp everywhere
inside the grid), and the fine voxels on the grid's faces then get back what the fine zero padding would have read
(:func:`_border_excess`, a few 2D convolutions of the faces).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Per output parity (0: even fine voxel, 1: odd), a fine-grid tap (-1, 0, 1: columns) reads the upsampled voxels it
# covers from the coarse voxels -1, 0, +1 (rows) with these weights: 2i-1 = 3/4 x[i-1] + 1/4 x[i], 2i = 1/4 x[i-1] +
# 3/4 x[i], 2i+1 = 3/4 x[i] + 1/4 x[i+1], 2i+2 = 1/4 x[i] + 3/4 x[i+1].
_UPSAMPLED_TAPS = torch.tensor(
    [
        [[0.75, 0.25, 0.0], [0.25, 0.75, 0.75], [0.0, 0.0, 0.25]],
        [[0.25, 0.0, 0.0], [0.75, 0.75, 0.25], [0.0, 0.25, 0.75]],
    ]
)


def _fine_taps() -> Tensor:
    """``[parity, coarse offset + 1, fine sub-voxel, fine tap + 1]``: which unshuffled fine voxel a tap reads."""
    taps = torch.zeros(2, 3, 2, 3)
    for parity in range(2):
        for tap in (-1, 0, 1):
            offset, sub_voxel = divmod(parity + tap, 2)
            taps[parity, offset + 1, sub_voxel, tap + 1] = 1.0
    return taps


_FINE_TAPS = _fine_taps()
# A fine part with at most this many channels is folded into the coarse convolution (upsampled_convolution).
FOLDED_FINE_CHANNELS = 2


def _coarse_kernel(weight: Tensor, coarse_channels: int) -> Tensor:
    """``weight [O, Cc + Cf, 3, 3, 3]`` -> the coarse grid's kernel ``[8 O, Cc + 8 Cf, 3, 3, 3]``; output channels
    in the order (parity d, parity h, parity w, o), the fine part's input channels in the order (c, sub d, sub h,
    sub w)."""
    up = _UPSAMPLED_TAPS.to(weight)
    upsampled = torch.einsum("pax,qby,rcz,oixyz->pqroiabc", up, up, up, weight[:, :coarse_channels])
    parts = [upsampled.flatten(0, 3)]
    if weight.shape[1] > coarse_channels:
        fine = _FINE_TAPS.to(weight)
        folded = torch.einsum("paux,qbvy,rcwz,oixyz->pqroiuvwabc", fine, fine, fine, weight[:, coarse_channels:])
        parts.append(folded.flatten(0, 3).flatten(1, 4))
    return torch.cat(parts, dim=1)


def _unshuffled(fine: Tensor) -> Tensor:
    """``[B, C, 2D, 2H, 2W]`` -> ``[B, 8 C, D, H, W]``, channels in the order (c, sub d, sub h, sub w)."""
    b, c, d, h, w = fine.shape
    blocks = fine.reshape(b, c, d // 2, 2, h // 2, 2, w // 2, 2)
    return blocks.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, 8 * c, d // 2, h // 2, w // 2)


def _shuffled(parities: Tensor, out_channels: int) -> Tensor:
    """``[B, 8 O, D, H, W]`` (channels (pd, ph, pw, o)) -> ``[B, O, 2D, 2H, 2W]``, written channels-last."""
    b, _, d, h, w = parities.shape
    blocks = parities.permute(0, 2, 3, 4, 1).reshape(b, d, h, w, 2, 2, 2, out_channels)
    return blocks.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, 2 * d, 2 * h, 2 * w, out_channels).permute(0, 4, 1, 2, 3)


def _upsampled_face(coarse: Tensor, axis: int, end: int) -> Tensor:
    """The upsampled grid's first (``end`` 0) or last (-1) layer along spatial ``axis`` (2, 3 or 4): the bilinear
    upsampling of the coarse grid's layer there (the trilinear one clamps at the border)."""
    layer = coarse.select(axis, 0 if end == 0 else coarse.shape[axis] - 1)
    return F.interpolate(layer, scale_factor=2, mode="bilinear", align_corners=False)


def _padded(face: Tensor, dim: int, replicate: bool) -> Tensor:
    """``face`` grown by one voxel at both ends of ``dim``: its end layers repeated, or zeros."""
    first, last = face.narrow(dim, 0, 1), face.narrow(dim, face.shape[dim] - 1, 1)
    if not replicate:
        first, last = torch.zeros_like(first), torch.zeros_like(last)
    return torch.cat([first, face, last], dim=dim)


def _border_excess(coarse: Tensor, weight: Tensor) -> list[tuple[int, int, Tensor]]:
    """What the coarse convolution over replicated borders adds, against the fine grid's zero padding, to the fine
    voxels of each face: ``(axis, end, [B, O, face])`` to subtract from that face layer.

    Outside the fine grid the replication reads the grid's face layer again. The one-voxel ring around the grid is
    split into disjoint pieces, one per face: the d-faces span the ring in h and w, the h-faces the ring in w but only
    the grid in d, the w-faces only the grid in d and h. Each piece reaches only the face layer next to it, through
    the kernel's outer slice along its axis: a 2D convolution of the piece, replicated where it spans the ring and
    zero-padded where it does not (those voxels belong to another piece)."""
    excess = []
    for axis in (2, 3, 4):
        for end in (0, -1):
            face = _upsampled_face(coarse, axis, end)  # [B, C, first other axis, second other axis]
            face = _padded(face, 2, replicate=axis == 2)
            face = _padded(face, 3, replicate=axis in (2, 3))
            kernel = weight.select(axis, 0 if end == 0 else 2)
            excess.append((axis, end, F.conv2d(face, kernel)))
    return excess


def upsampled_convolution(coarse: Tensor, fine: Tensor | None, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``conv3d(cat([interpolate(coarse, scale_factor=2, mode="trilinear"), fine], 1), weight, bias, padding=1)``,
    exactly (to float rounding), computed on the coarse grid (see the module).

    ``coarse [B, Cc, D, H, W]``, ``fine [B, Cf, 2D, 2H, 2W]`` or None, ``weight [O, Cc + Cf, 3, 3, 3]``; the result
    ``[B, O, 2D, 2H, 2W]`` is channels-last. A fine part of at most ``FOLDED_FINE_CHANNELS`` channels (the image) is
    folded into the coarse convolution; a wider one is convolved on the fine grid, where folding would multiply its
    work by 8 (``to_half``'s 8 stride-2 channels: 92 against 208 ms on 2 threads)."""
    out_channels, coarse_channels = weight.shape[0], coarse.shape[1]
    if fine is not None and tuple(fine.shape[2:]) != tuple(2 * n for n in coarse.shape[2:]):
        raise ValueError(f"fine grid {tuple(fine.shape[2:])} is not twice the coarse grid {tuple(coarse.shape[2:])}")
    folds = fine is not None and fine.shape[1] <= FOLDED_FINE_CHANNELS
    inputs = [F.pad(coarse, (1, 1, 1, 1, 1, 1), mode="replicate")]
    if folds:
        inputs.append(F.pad(_unshuffled(fine).to(coarse.dtype), (1, 1, 1, 1, 1, 1)))
    kernel = _coarse_kernel(weight if folds else weight[:, :coarse_channels], coarse_channels)
    separate = fine is not None and not folds
    parity_bias = None if bias is None or separate else bias.repeat(8)
    result = _shuffled(F.conv3d(torch.cat(inputs, dim=1), kernel.to(coarse.dtype), parity_bias), out_channels)
    if separate:
        result = result + F.conv3d(fine, weight[:, coarse_channels:], bias, padding=1)
    for axis, end, excess in _border_excess(coarse, weight[:, :coarse_channels].to(coarse.dtype)):
        result.narrow(axis, 0 if end == 0 else result.shape[axis] - 1, 1).sub_(excess.unsqueeze(axis))
    return result
