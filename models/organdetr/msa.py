"""MultiScale Attention (MSA) encoder of Organ-DETR (paper section 3.1).

Every pyramid level is cut into non-overlapping ``p x p x p`` patches, embedded as tokens (a stride-``p`` conv is
the patch embedding), and refined by ``depth`` MSA layers. In one layer, for each level ``l``:

1. intra-scale self-attention among the tokens of level ``l``, then an FFN;
2. inter-scale cross-attention, recursively, to every COARSER level ``m`` (coarsest first): the queries are the
   running state of level ``l`` (projected), keys/values the tokens of level ``m`` as produced by this layer, each
   followed by an FFN. The coarsest level has no cross-attention, so abstract maps guide finer ones top-down.

Each attention and FFN is wrapped in residual + LayerNorm. Query and key inputs carry a sine positional code of the
NORMALISED patch-centre coordinate, so a fine token and the coarse token covering the same region are related.
Finally each level's tokens are un-patchified (stride-``p`` transposed conv) back to the level's resolution and
added to a projection of the level's input map (a residual around the encoder keeps sub-patch detail).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .config import MSAConfig
from .convolution import Conv3d
from .position_encoding import sine_position_encoding_3d


class MultiHeadAttention(nn.Module):
    """Multi-head attention with projected queries, keys and values, on ``scaled_dot_product_attention``.

    No dropout on the attention matrix: on CPU it forces the unfused kernel that materialises ``T x T``
    weights (10x slower at 4096 tokens); :class:`AttentionBlock` applies the configured dropout to the output.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"MSA width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def _heads(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        return x.view(batch, tokens, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """``query`` ``[B, Tq, C]``, ``key``/``value`` ``[B, Tk, C]`` -> ``[B, Tq, C]``."""
        attended = F.scaled_dot_product_attention(
            self._heads(self.q_proj(query)),
            self._heads(self.k_proj(key)),
            self._heads(self.v_proj(value)),
        )
        return self.out_proj(attended.transpose(1, 2).flatten(2))


class AttentionBlock(nn.Module):
    """Attention then FFN (linear, ReLU, dropout, linear), each with residual + LayerNorm (post-norm)."""

    def __init__(self, dim: int, config: MSAConfig) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(dim, config.num_heads, config.bias)
        self.norm_attention = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, config.ffn_dim, bias=config.bias),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.ffn_dim, dim, bias=config.bias),
        )
        self.norm_ffn = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, x_pos: Tensor | None, context: Tensor, context_pos: Tensor | None) -> Tensor:
        """Attend from ``x`` to ``context`` (pass ``x`` itself for self-attention); positions go to Q and K only."""
        query = x if x_pos is None else x + x_pos
        key = context if context_pos is None else context + context_pos
        x = self.norm_attention(x + self.dropout(self.attention(query, key, context)))
        return self.norm_ffn(x + self.dropout(self.ffn(x)))


class MSALayer(nn.Module):
    """One MSA layer over all levels: self-attention per level, then cross-attention to each coarser level."""

    def __init__(self, dim: int, num_levels: int, config: MSAConfig) -> None:
        super().__init__()
        self.num_levels = num_levels
        self.self_blocks = nn.ModuleList(AttentionBlock(dim, config) for _ in range(num_levels))
        # cross_blocks[f"{l}_{m}"]: level l (finer) attends to level m > l (coarser).
        self.cross_blocks = nn.ModuleDict(
            {
                f"{level}_{coarse}": AttentionBlock(dim, config)
                for level in range(num_levels)
                for coarse in range(level + 1, num_levels)
            }
        )

    def forward(self, tokens: list[Tensor], positions: list[Tensor | None]) -> list[Tensor]:
        """``tokens[l]`` ``[B, T_l, C]``, finest level first; returns the refined tokens in the same order."""
        outputs: list[Tensor | None] = [None] * self.num_levels
        for level in range(self.num_levels - 1, -1, -1):
            x = self.self_blocks[level](tokens[level], positions[level], tokens[level], positions[level])
            for coarse in range(self.num_levels - 1, level, -1):
                x = self.cross_blocks[f"{level}_{coarse}"](x, positions[level], outputs[coarse], positions[coarse])
            outputs[level] = x
        return outputs


class MultiScaleAttentionEncoder(nn.Module):
    """Patchify every level, run ``depth`` :class:`MSALayer`, un-patchify back to each level's resolution."""

    def __init__(self, in_channels: int, out_channels: int, num_levels: int, config: MSAConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.dim = config.embed_dim or out_channels
        self.positional_encoding = config.positional_encoding
        p, dim = config.patch_size, self.dim
        self.patch_embed = nn.ModuleList(Conv3d(in_channels, dim, p, stride=p) for _ in range(num_levels))
        self.layers = nn.ModuleList(MSALayer(dim, num_levels, config) for _ in range(config.depth))
        self.unpatchify = nn.ModuleList(nn.ConvTranspose3d(dim, out_channels, p, stride=p) for _ in range(num_levels))
        self.skip = nn.ModuleList(
            nn.Identity() if in_channels == out_channels else Conv3d(in_channels, out_channels, 1)
            for _ in range(num_levels)
        )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """``features[l]`` ``[B, C_in, d0, d1, d2]`` (finest first) -> same sizes with ``out_channels``."""
        tokens, positions, grids = [], [], []
        for level, feature in enumerate(features):
            if any(size % self.patch_size for size in feature.shape[2:]):
                raise ValueError(
                    f"MSA level {level} of size {tuple(feature.shape[2:])} is not divisible by the patch size "
                    f"{self.patch_size}"
                )
            embedded = self.patch_embed[level](feature)
            grid = tuple(embedded.shape[2:])
            grids.append(grid)
            tokens.append(embedded.flatten(2).transpose(1, 2))
            positions.append(
                sine_position_encoding_3d(grid, self.dim, device=feature.device, dtype=feature.dtype)[None]
                if self.positional_encoding
                else None
            )
        for layer in self.layers:
            tokens = layer(tokens, positions)
        outputs = []
        for level, (feature, level_tokens, grid) in enumerate(zip(features, tokens, grids, strict=True)):
            patches = level_tokens.transpose(1, 2).reshape(feature.shape[0], self.dim, *grid)
            outputs.append(self.unpatchify[level](patches) + self.skip[level](feature))
        return outputs
