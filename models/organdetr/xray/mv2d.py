"""The MV2D network: 3D organ boxes from several X-ray views by lifting 2D detections into 3D object queries.

Per scene: a 2D detector (:mod:`organdetr.xray.view_detector`) runs on every view; each organ's best detection in
each view becomes a query (``views x organs`` queries) with a 3D reference point from the camera geometry and a
predicted depth (:mod:`organdetr.xray.queries`); a transformer decoder refines the queries, each cross-attending only
to the feature cells of the views its reference region projects onto; heads predict organ logits (``K + 1``, the last
"no object") and a box in the isocentre frame's unit cube, as a refinement of the reference point. The outputs are
what the project's :class:`organdetr.criterion.SetCriterion` with a :class:`organdetr.matcher.DenseQueryMatcher`
trains (``pred_logits``, ``pred_boxes``, ``aux_outputs``); the 2D detector is supervised by the true silhouettes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from ..config import LossConfig, MatcherConfig
from ..criterion import SetCriterion
from ..matcher import DenseQueryMatcher
from .camera import Camera, CameraStack
from .queries import (
    IsocentreFrame,
    isocentre_depths,
    reference_points,
    relevant_view_mask,
    sine_encode_points,
    token_pixels,
)
from .scenes import Scene
from .view_detector import CenterNetConfig, CenterNetViewDetector, ViewDetector, centernet_loss, decode

_EPSILON = 1e-5


@dataclass(frozen=True)
class MV2DConfig:
    num_classes: int = 7
    detector: CenterNetConfig = field(default_factory=CenterNetConfig)
    d_model: int = 64
    num_heads: int = 4
    ffn_dim: int = 128
    num_layers: int = 2
    frame_half_extent_mm: float = 200.0  # the isocentre frame: the 400 mm field the default C-arm sees
    max_depth_offset_mm: float = 150.0  # reference depths within isocentre depth +- this
    attention_margin_mm: float = 10.0  # added to a detection's half size for the relevant-view region
    feature_selection: bool = True  # False: every query attends to every view's cells (the ablation)
    # The 2D detector's losses relative to the set criterion's. 3 rather than 1: in 600-step probes on OpenKBP it
    # raised the 2D AP50 (0.02 -> 0.07) and the 3D AP50 with it (0.13 -> 0.16); the queries start from its boxes.
    weight_2d: float = 3.0


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


def _inverse_sigmoid(x: Tensor) -> Tensor:
    x = x.clamp(_EPSILON, 1 - _EPSILON)
    return torch.log(x / (1 - x))


class MV2D(nn.Module):
    def __init__(self, config: MV2DConfig = MV2DConfig(), detector: ViewDetector | None = None) -> None:
        super().__init__()
        self.config = config
        self.detector = detector if detector is not None else CenterNetViewDetector(config.detector)
        channels, width = self.detector.feature_channels, config.d_model
        self.depth_head = _mlp(channels, width, 1)
        self.query_content = nn.Linear(channels, width)
        self.class_embedding = nn.Embedding(config.num_classes, width)
        self.query_position = _mlp(width, width, width)
        self.memory_content = nn.Linear(channels, width)
        self.memory_position = _mlp(width, width, width)
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(width, config.num_heads, config.ffn_dim, dropout=0.0, batch_first=True)
            for _ in range(config.num_layers)
        )
        self.class_head = nn.Linear(width, config.num_classes + 1)
        self.box_head = _mlp(width, width, 6)

    def forward(self, images: Tensor, cameras: Sequence[Sequence[Camera]], isocenters: Tensor) -> dict:
        """``images`` ``[B, V, rows, columns]`` line integrals, each scene's cameras and isocentre ``[B, 3]`` (world
        mm) -> the set criterion's outputs plus ``view_outputs`` and ``view_detections`` (the 2D detector's) and
        ``reference_points``."""
        batch, views, rows, columns = images.shape
        view_outputs = self.detector(images.reshape(batch * views, 1, rows, columns))
        detections = decode(view_outputs)
        cells = token_pixels(rows, columns, view_outputs.stride, images.device)
        targets, memories, masks, references = [], [], [], []
        for b in range(batch):
            stack = CameraStack.from_cameras(cameras[b], images.device)
            frame = IsocentreFrame(isocenters[b].float(), self.config.frame_half_extent_mm)
            scene = slice(b * views, (b + 1) * views)
            target, points, radius = self._queries(stack, frame, detections.boxes[scene], detections.features[scene])
            if self.config.feature_selection:
                own_view = torch.arange(views, device=images.device).repeat_interleave(self.config.num_classes)
                own_cell = detections.indices[scene].reshape(-1)
                masks.append(relevant_view_mask(stack, points, radius, own_view, own_cell, cells, view_outputs.stride))
            memories.append(self._memory(stack, frame, view_outputs.features[scene], cells))
            targets.append(target)
            references.append(frame.normalise_points(points).clamp(0.0, 1.0))
        target, memory, reference = torch.stack(targets), torch.stack(memories), torch.stack(references)
        # nn.MultiheadAttention: True = may not attend; one mask per scene and head.
        attention_mask = None
        if self.config.feature_selection:
            attention_mask = (~torch.stack(masks)).repeat_interleave(self.config.num_heads, dim=0)
        layer_outputs = []
        for layer in self.layers:
            target = layer(target, memory, memory_mask=attention_mask)
            layer_outputs.append(self._heads(target, reference))
        outputs = dict(layer_outputs[-1])
        outputs["aux_outputs"] = layer_outputs[:-1]
        outputs["view_outputs"] = view_outputs
        outputs["view_detections"] = detections
        outputs["reference_points"] = reference
        return outputs

    def _queries(
        self, cameras: CameraStack, frame: IsocentreFrame, boxes: Tensor, features: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One scene's queries from its detections (``boxes`` ``[V, K, 4]``, ``features`` ``[V, K, C]``): the
        decoder input ``[V * K, d]`` (content + position; view-major), reference points ``[V * K, 3]`` (world mm)
        and the radius ``[V * K]`` (mm, no gradient) of each query's relevant region."""
        views, classes = boxes.shape[:2]
        centres = ((boxes[..., :2] + boxes[..., 2:]) / 2).transpose(0, 1)  # [K, V, 2]
        offset = self.config.max_depth_offset_mm * torch.tanh(self.depth_head(features)[..., 0]).transpose(0, 1)
        depths = isocentre_depths(cameras, frame.isocenter)[None, :] + offset  # [K, V]
        points = reference_points(cameras, centres, depths).transpose(0, 1).reshape(-1, 3)
        code = sine_encode_points(frame.normalise_points(points).clamp(0.0, 1.0), self.config.d_model)
        organ = torch.arange(classes, device=boxes.device).repeat(views)
        content = self.query_content(features.reshape(views * classes, -1)) + self.class_embedding(organ)
        # The relevant region: a ball of the detection's half size at its depth, plus a margin.
        size_px = (boxes[..., 2:] - boxes[..., :2]).amax(dim=-1).reshape(-1)
        focal = cameras.intrinsics[:, 0, 0].repeat_interleave(classes)
        radius = 0.5 * size_px * depths.transpose(0, 1).reshape(-1) / focal + self.config.attention_margin_mm
        return content + self.query_position(code), points, radius.detach()

    def _memory(self, cameras: CameraStack, frame: IsocentreFrame, features: Tensor, cells: Tensor) -> Tensor:
        """One scene's keys and values ``[V * h * w, d]``: every view's feature cells with the positional code of the
        point where the cell's ray passes the isocentre's depth."""
        views = features.shape[0]
        depth = isocentre_depths(cameras, frame.isocenter)[None, :].expand(len(cells), -1)  # [h*w, V]
        points = cameras.unproject(cells[:, None, :].expand(-1, views, 2), depth).transpose(0, 1)  # [V, h*w, 3]
        code = sine_encode_points(frame.normalise_points(points).clamp(0.0, 1.0), self.config.d_model)
        content = self.memory_content(features.flatten(2).transpose(1, 2))  # [V, h*w, d]
        return (content + self.memory_position(code)).flatten(0, 1)

    def _heads(self, target: Tensor, reference: Tensor) -> dict[str, Tensor]:
        delta = self.box_head(target)
        centre = torch.sigmoid(_inverse_sigmoid(reference) + delta[..., :3])
        return {"pred_logits": self.class_head(target), "pred_boxes": torch.cat([centre, delta[..., 3:].sigmoid()], -1)}


def scene_targets(scenes: Sequence[Scene], half_extent_mm: float, device: torch.device | str) -> list[dict]:
    """The set criterion's targets: annotated organs' boxes normalised to each scene's isocentre frame."""
    targets = []
    for scene in scenes:
        present = np.isfinite(scene.boxes3d).all(axis=1) & scene.annotated
        frame = IsocentreFrame(torch.as_tensor(scene.isocenter, dtype=torch.float32), half_extent_mm)
        boxes = frame.normalise_boxes(torch.as_tensor(scene.boxes3d[present], dtype=torch.float32))
        targets.append(
            {
                "labels": torch.as_tensor(np.nonzero(present)[0], device=device),
                "boxes": boxes.to(device),
                "annotated": torch.as_tensor(scene.annotated, device=device),
            }
        )
    return targets


class MV2DLoss(nn.Module):
    """The set criterion (Dense Query Matching, class + L1 + GIoU, per decoder layer) plus the 2D detector's losses
    on the true silhouette boxes."""

    def __init__(
        self, config: MV2DConfig, matcher: MatcherConfig | None = None, loss: LossConfig | None = None
    ) -> None:
        super().__init__()
        self.config = config
        matching = DenseQueryMatcher(matcher or MatcherConfig())
        self.criterion = SetCriterion(config.num_classes, matching, loss or LossConfig())

    def forward(self, outputs: dict, scenes: Sequence[Scene]) -> dict[str, Tensor]:
        device = outputs["pred_logits"].device
        losses = self.criterion(outputs, scene_targets(scenes, self.config.frame_half_extent_mm, device))
        boxes2d = torch.as_tensor(np.concatenate([scene.boxes2d for scene in scenes]), dtype=torch.float32)
        losses_2d = centernet_loss(outputs["view_outputs"], boxes2d)
        losses.update(losses_2d)
        losses["loss"] = losses["loss"] + self.config.weight_2d * sum(losses_2d.values())
        return losses


@torch.no_grad()
def predict_boxes(outputs: dict, isocenters: Tensor, half_extent_mm: float) -> tuple[Tensor, Tensor]:
    """One box per organ and scene: the query with the highest probability for the organ. Returns world centre-size
    boxes ``[B, K, 6]`` (mm) and scores ``[B, K]``."""
    probabilities = outputs["pred_logits"].softmax(-1)[..., :-1]  # [B, Q, K]
    scores, best = probabilities.max(dim=1)  # [B, K]
    boxes = torch.gather(outputs["pred_boxes"], 1, best[..., None].expand(-1, -1, 6))
    world = [IsocentreFrame(i.float(), half_extent_mm).world_boxes(b) for i, b in zip(isocenters, boxes, strict=True)]
    return torch.stack(world), scores
