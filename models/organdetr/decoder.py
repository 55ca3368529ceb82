"""Deformable-DETR transformer in 3D: optional deformable encoder layers and the query decoder with its heads.

Decoder layer (post-norm): self-attention among the object queries, deformable cross-attention from the queries to
the flattened multi-level memory around each query's reference point, then an FFN. Each learned query embedding is
split into a position half and a content half; the initial reference point is ``sigmoid(Linear(query_pos))``.
Every layer's output goes through the class head and a 3-layer box MLP whose centre output is added to
``inverse_sigmoid(reference)`` before the sigmoid, giving one prediction per layer (auxiliary outputs). With
``box_refine`` every layer has its own box MLP and the next layer's reference is the (detached) predicted box.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from .config import DecoderConfig
from .deformable_attention import SPATIAL_DIMS, MultiScaleDeformableAttention3D
from .position_encoding import sine_position_encoding_3d

BOX_VALUES = 2 * SPATIAL_DIMS
# Prior probability of each organ class for a fresh query (DETR-style bias init); no-object takes the rest.
CLASS_PRIOR_PROB = 0.01
# Normalised box size a fresh query predicts before training (Deformable DETR: sigmoid(-2) ~ 0.12).
INITIAL_BOX_SIZE = 0.12
INVERSE_SIGMOID_EPS = 1e-5


def inverse_sigmoid(x: Tensor, eps: float = INVERSE_SIGMOID_EPS) -> Tensor:
    """Numerically safe logit of values in ``[0, 1]``."""
    x = x.clamp(0.0, 1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: Tensor) -> Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class FeedForward(nn.Module):
    """Transformer FFN with residual + LayerNorm."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, d_model)
        )
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.dropout(self.net(x)))


def level_reference_points(spatial_shapes: list[tuple[int, int, int]], device: torch.device) -> Tensor:
    """Normalised voxel centres of every level, flattened and concatenated: ``[S, 3]`` in array-axis order."""
    points = []
    for shape in spatial_shapes:
        axes = [(torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size for size in shape]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        points.append(grid.reshape(-1, SPATIAL_DIMS))
    return torch.cat(points)


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over the multi-level memory, then FFN."""

    def __init__(self, config: DecoderConfig, num_levels: int) -> None:
        super().__init__()
        self.attention = MultiScaleDeformableAttention3D(
            config.d_model, config.num_heads, num_levels, config.num_points
        )
        self.dropout = nn.Dropout(config.dropout)
        self.norm = nn.LayerNorm(config.d_model)
        self.ffn = FeedForward(config.d_model, config.ffn_dim, config.dropout)

    def forward(
        self, src: Tensor, pos: Tensor, reference: Tensor, spatial_shapes: list[tuple[int, int, int]]
    ) -> Tensor:
        attended = self.attention(src + pos, reference, src, spatial_shapes)
        return self.ffn(self.norm(src + self.dropout(attended)))


class DeformableEncoder(nn.Module):
    """``num_encoder_layers`` deformable self-attention layers with sine positions plus learned level embeddings."""

    def __init__(self, config: DecoderConfig, num_levels: int) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(num_levels, config.d_model))
        nn.init.normal_(self.level_embed)
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(config, num_levels) for _ in range(config.num_encoder_layers)
        )

    def forward(self, memory: Tensor, spatial_shapes: list[tuple[int, int, int]]) -> Tensor:
        d_model = memory.shape[-1]
        pos = torch.cat(
            [
                sine_position_encoding_3d(shape, d_model, device=memory.device, dtype=memory.dtype) + embed
                for shape, embed in zip(spatial_shapes, self.level_embed, strict=True)
            ]
        )[None]
        points = level_reference_points(spatial_shapes, memory.device).to(memory.dtype)
        reference = points[None, :, None, :].expand(memory.shape[0], -1, len(spatial_shapes), -1)
        for layer in self.layers:
            memory = layer(memory, pos, reference, spatial_shapes)
        return memory


class DeformableDecoderLayer(nn.Module):
    """Query self-attention, deformable cross-attention to the memory, FFN; each with residual + LayerNorm."""

    def __init__(self, config: DecoderConfig, num_levels: int) -> None:
        super().__init__()
        self.self_attention = nn.MultiheadAttention(
            config.d_model, config.num_heads, dropout=config.dropout, batch_first=True
        )
        self.norm_self = nn.LayerNorm(config.d_model)
        self.cross_attention = MultiScaleDeformableAttention3D(
            config.d_model, config.num_heads, num_levels, config.num_points
        )
        self.norm_cross = nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.ffn = FeedForward(config.d_model, config.ffn_dim, config.dropout)

    def forward(
        self,
        target: Tensor,
        query_pos: Tensor,
        reference: Tensor,
        memory: Tensor,
        spatial_shapes: list[tuple[int, int, int]],
    ) -> Tensor:
        q = k = target + query_pos
        attended = self.self_attention(q, k, target, need_weights=False)[0]
        target = self.norm_self(target + self.dropout(attended))
        attended = self.cross_attention(target + query_pos, reference, memory, spatial_shapes)
        target = self.norm_cross(target + self.dropout(attended))
        return self.ffn(target)


class DeformableDecoder(nn.Module):
    """Object queries -> per-layer class logits ``[B, N, K+1]`` and sigmoid boxes ``[B, N, 6]``."""

    def __init__(self, config: DecoderConfig, num_levels: int, num_classes: int, quality_head: bool = False) -> None:
        super().__init__()
        d_model = config.d_model
        self.box_refine = config.box_refine
        self.query_embed = nn.Embedding(config.num_queries, 2 * d_model)
        self.reference_points = nn.Linear(d_model, SPATIAL_DIMS)
        self.layers = nn.ModuleList(DeformableDecoderLayer(config, num_levels) for _ in range(config.num_layers))
        self.class_head = nn.Linear(d_model, num_classes + 1)
        num_box_heads = config.num_layers if config.box_refine else 1
        self.box_heads = nn.ModuleList(MLP(d_model, d_model, BOX_VALUES, 3) for _ in range(num_box_heads))
        # Logit of the IoU that each query's box has with its organ (IoU-aware scores).
        self.quality_head = MLP(d_model, d_model, 1, 2) if quality_head else None
        self.reset_parameters(num_classes)

    def reset_parameters(self, num_classes: int) -> None:
        """DETR-style start: organ logits at a small prior, boxes = reference centre with a modest size."""
        nn.init.xavier_uniform_(self.reference_points.weight)
        nn.init.zeros_(self.reference_points.bias)
        organ_bias = math.log(CLASS_PRIOR_PROB / (1.0 - num_classes * CLASS_PRIOR_PROB))
        with torch.no_grad():
            self.class_head.bias.fill_(organ_bias)
            self.class_head.bias[num_classes] = 0.0
        for index, head in enumerate(self.box_heads):
            last = head.layers[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            if index == 0:
                # Later refinement heads start as identity on the previous box; only the first sets the size.
                nn.init.constant_(last.bias[SPATIAL_DIMS:], math.log(INITIAL_BOX_SIZE / (1.0 - INITIAL_BOX_SIZE)))

    def forward(self, memory: Tensor, spatial_shapes: list[tuple[int, int, int]]) -> list[dict[str, Tensor]]:
        """Predictions of every decoder layer (last one last) as ``{"pred_logits", "pred_boxes"}``."""
        batch = memory.shape[0]
        query_pos, target = self.query_embed.weight[None].expand(batch, -1, -1).chunk(2, dim=-1)
        reference = self.reference_points(query_pos).sigmoid()
        predictions = []
        for index, layer in enumerate(self.layers):
            level_reference = reference[:, :, None, :].expand(-1, -1, len(spatial_shapes), -1)
            target = layer(target, query_pos, level_reference, memory, spatial_shapes)
            delta = self.box_heads[index if self.box_refine else 0](target)
            if reference.shape[-1] == SPATIAL_DIMS:
                offset = torch.cat([inverse_sigmoid(reference), torch.zeros_like(reference)], dim=-1)
            else:
                offset = inverse_sigmoid(reference)
            boxes = (delta + offset).sigmoid()
            prediction = {"pred_logits": self.class_head(target), "pred_boxes": boxes}
            if self.quality_head is not None:
                prediction["pred_quality"] = self.quality_head(target)[..., 0]
            predictions.append(prediction)
            if self.box_refine:
                reference = boxes.detach()
        return predictions
