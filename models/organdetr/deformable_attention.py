"""3D multi-scale deformable attention (Deformable DETR in 3D) in pure PyTorch.

Each query looks at ``num_points`` sampled locations per head and pyramid level around its reference point and
returns their softmax-weighted average. Sampling is trilinear ``torch.nn.functional.grid_sample`` on 5D value maps
with zero padding and ``align_corners=False``: grid coordinate ``-1`` / ``+1`` are the outer EDGES of the first /
last voxel, which is exactly the voxel-edge box convention (normalised ``u`` in ``[0, 1]`` -> grid ``2u - 1``).

All locations are given in array-axis order ``(axis0, axis1, axis2)``. ``grid_sample``'s grid components run the
other way (its last component indexes the LAST spatial axis), so the locations are flipped when the grid is built.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SPATIAL_DIMS = 3


def multi_scale_deformable_sampling(
    value: Tensor, spatial_shapes: list[tuple[int, int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Weighted trilinear sampling of a flattened multi-level value tensor.

    Args:
        value: ``[B, S, H, Ch]`` per-head values of all levels, flattened in row-major order, levels concatenated.
        spatial_shapes: ``(d0, d1, d2)`` of every level; ``sum(d0 * d1 * d2) == S``.
        sampling_locations: ``[B, Q, H, L, P, 3]`` normalised ``(u0, u1, u2)`` in array-axis order.
        attention_weights: ``[B, Q, H, L, P]``, normalised over ``L * P``.

    Returns:
        ``[B, Q, H * Ch]``.
    """
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    sizes = [d0 * d1 * d2 for d0, d1, d2 in spatial_shapes]
    # grid_sample wants (x, y, z) = (axis2, axis1, axis0) in [-1, 1].
    grids = (2.0 * sampling_locations - 1.0).flip(-1)
    sampled = []
    for level, (shape, level_value) in enumerate(zip(spatial_shapes, value.split(sizes, dim=1), strict=True)):
        level_value = level_value.permute(0, 2, 3, 1).reshape(batch * heads, head_dim, *shape)
        level_grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 1, SPATIAL_DIMS)
        level_sampled = F.grid_sample(
            level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        sampled.append(level_sampled.squeeze(-1))  # [B*H, Ch, Q, P]
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # [B*H, Ch, Q, L*P]
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    output = (stacked * weights).sum(-1)
    return output.view(batch, heads * head_dim, queries).transpose(1, 2)


def _spread_directions(num_heads: int) -> Tensor:
    """``num_heads`` unit-ish directions spread over the sphere (Fibonacci lattice), scaled to max-norm 1."""
    index = torch.arange(num_heads, dtype=torch.float64) + 0.5
    polar = torch.acos(1.0 - 2.0 * index / num_heads)
    azimuth = math.pi * (1.0 + 5.0**0.5) * index
    directions = torch.stack([polar.cos(), polar.sin() * azimuth.cos(), polar.sin() * azimuth.sin()], dim=-1)
    return directions / directions.abs().amax(dim=-1, keepdim=True)


class MultiScaleDeformableAttention3D(nn.Module):
    """Multi-head, multi-level, multi-point 3D deformable attention.

    Offsets are in voxels of each level for 3-value reference points, and in units of the reference box's half
    size divided by ``num_points`` for 6-value (box) reference points, as in Deformable DETR's box refinement.
    """

    def __init__(self, d_model: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads, self.num_levels, self.num_points = num_heads, num_levels, num_points
        self.sampling_offsets = nn.Linear(d_model, num_heads * num_levels * num_points * SPATIAL_DIMS)
        self.attention_weights = nn.Linear(d_model, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start as rays of 1..P voxels in a different direction per head; attention starts uniform."""
        nn.init.zeros_(self.sampling_offsets.weight)
        rays = _spread_directions(self.num_heads)[:, None, None, :]
        steps = torch.arange(1, self.num_points + 1, dtype=torch.float64)[None, None, :, None]
        pattern = (rays * steps).expand(self.num_heads, self.num_levels, self.num_points, SPATIAL_DIMS)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(pattern.reshape(-1).to(self.sampling_offsets.bias.dtype))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for linear in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: list[tuple[int, int, int]],
    ) -> Tensor:
        """Attend from ``query`` ``[B, Q, C]`` to the flattened levels ``value`` ``[B, S, C]``.

        ``reference_points`` is ``[B, Q, L, 3]`` (normalised points) or ``[B, Q, L, 6]`` (normalised boxes
        ``c0, c1, c2, s0, s1, s2``), array-axis order.
        """
        batch, queries, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        projected = self.value_proj(value).view(batch, value.shape[1], heads, -1)
        offsets = self.sampling_offsets(query).view(batch, queries, heads, levels, points, SPATIAL_DIMS)
        weights = self.attention_weights(query).view(batch, queries, heads, levels * points).softmax(-1)
        weights = weights.view(batch, queries, heads, levels, points)
        if reference_points.shape[-1] == SPATIAL_DIMS:
            shapes = torch.tensor(spatial_shapes, dtype=query.dtype, device=query.device)
            locations = reference_points[:, :, None, :, None, :] + offsets / shapes[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 2 * SPATIAL_DIMS:
            centres = reference_points[:, :, None, :, None, :SPATIAL_DIMS]
            half_sizes = reference_points[:, :, None, :, None, SPATIAL_DIMS:] * 0.5
            locations = centres + offsets / points * half_sizes
        else:
            raise ValueError(f"reference points must have 3 or 6 values, got {reference_points.shape[-1]}")
        output = multi_scale_deformable_sampling(projected, spatial_shapes, locations, weights)
        return self.output_proj(output)
