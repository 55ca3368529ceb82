"""Training losses of Organ-DETR: classification, box (L1 + GIoU) and multiscale segmentation, with partial labels.

``L = weight_class * L_cls + weight_bbox * L_L1 + weight_giou * L_GIoU + weight_seg * L_seg`` (paper: 2 / 5 / 2 / 2),
plus the same detection terms for every auxiliary decoder layer, each with its own Dense Query Matching.

Partial labels: a training sample may annotate only some organs (``target["annotated"]``). A query that is not
matched to any ground truth is trained towards "no object", but a missing annotation is no evidence that the query
is not one of the unannotated organs; so for unmatched queries the logits of the sample's unannotated classes are
removed from the softmax (set to ``-inf``). Likewise the segmentation loss only uses the background channel and the
channels of annotated organs. Its Dice term counts only the organs that have voxels in the sample: an organ the
window leaves out has an empty Dice target, whose loss is ~1 whatever the prediction and whose gradient pushes the
organ's probability down everywhere (nnU-Net and nnDetection also leave such terms out).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from .box_ops import matched_giou, pairwise_iou
from .config import LossConfig
from .matcher import DenseQueryMatcher, MatchIndices
from .segmentation_branch import FineLogits

Target = dict[str, torch.Tensor]


class SetCriterion(nn.Module):
    """Matches predictions to ground truths with a :class:`DenseQueryMatcher` and computes the weighted losses.

    ``forward`` returns named scalar losses (``loss_class``, ``loss_bbox``, ``loss_giou``, ``loss_quality`` with a
    quality head, ``loss_presence`` with a presence head, ``loss_seg`` / ``loss_seg_branch`` / ``loss_seg_fine``
    when a label map and segmentation logits are available, ``<name>_aux{i}`` for auxiliary decoder layer ``i``) and
    ``loss``, their weighted sum.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: DenseQueryMatcher,
        config: LossConfig,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.config = config
        class_weight = torch.full((num_classes + 1,), config.organ_class_weight)
        class_weight[num_classes] = config.background_class_weight
        self.register_buffer("class_weight", class_weight)
        seg_class_weight = torch.ones(num_classes + 1)  # per label value, 0 = background
        for name, weight in config.seg_class_weights.items():
            if class_names is None or name not in class_names:
                raise ValueError(f"seg_class_weights names {name!r}, not one of the classes {class_names}")
            seg_class_weight[list(class_names).index(name) + 1] = weight
        self.register_buffer("seg_class_weight", seg_class_weight)
        self.dice = DiceLoss(include_background=False, reduction="none")
        self.weights = {
            "loss_class": config.weight_class,
            "loss_bbox": config.weight_bbox,
            "loss_giou": config.weight_giou,
            "loss_seg": config.weight_seg,
            "loss_seg_branch": config.weight_seg_branch,
            "loss_seg_fine": config.weight_seg_fine,
            "loss_quality": config.weight_quality,
            "loss_presence": config.weight_presence,
        }

    def annotated(self, targets: list[Target], device: torch.device) -> torch.Tensor:
        """``BoolTensor[B, K]``: the classes each target annotates (all when it does not say)."""
        return torch.stack(
            [
                torch.ones(self.num_classes, dtype=torch.bool, device=device)
                if t.get("annotated") is None
                else t["annotated"].to(device=device, dtype=torch.bool)
                for t in targets
            ]
        )

    def loss_class(self, logits: torch.Tensor, targets: list[Target], indices: list[MatchIndices]) -> torch.Tensor:
        """Class-weighted cross-entropy over ``K + 1`` classes; unannotated classes masked for unmatched queries."""
        logits = logits.float()
        batch, num_queries, _ = logits.shape
        target_classes = torch.full((batch, num_queries), self.num_classes, dtype=torch.long, device=logits.device)
        matched = torch.zeros(batch, num_queries, dtype=torch.bool, device=logits.device)
        for b, (query_idx, target_idx) in enumerate(indices):
            target_classes[b, query_idx] = targets[b]["labels"].to(logits.device)[target_idx]
            matched[b, query_idx] = True
        # [B, K+1] logits that must not be pushed towards "no object": unannotated organs (never the no-object one).
        unannotated = ~self.annotated(targets, logits.device)
        unannotated = F.pad(unannotated, (0, 1), value=False)
        mask = unannotated[:, None, :] & ~matched[:, :, None]
        logits = logits.masked_fill(mask, float("-inf"))
        return F.cross_entropy(logits.transpose(1, 2), target_classes, weight=self.class_weight)

    def loss_boxes(
        self, boxes: torch.Tensor, targets: list[Target], indices: list[MatchIndices], num_positives: float
    ) -> dict[str, torch.Tensor]:
        """L1 and ``1 - GIoU`` of matched boxes, summed and divided by the number of positive queries."""
        pred = torch.cat([boxes[b, query_idx] for b, (query_idx, _) in enumerate(indices)]).float()
        gt = torch.cat([t["boxes"][target_idx] for t, (_, target_idx) in zip(targets, indices, strict=True)])
        gt = gt.to(device=boxes.device, dtype=torch.float32)
        return {
            "loss_bbox": F.l1_loss(pred, gt, reduction="sum") / num_positives,
            "loss_giou": (1 - matched_giou(pred, gt)).sum() / num_positives,
        }

    def loss_quality(
        self, quality: torch.Tensor, boxes: torch.Tensor, targets: list[Target], indices: list[MatchIndices]
    ) -> torch.Tensor:
        """Binary cross-entropy of each matched query's quality logit against its box's IoU with its organ.

        The IoU target is computed from detached boxes: quality learns to judge a box, not to move it.
        """
        logits = torch.cat([quality[b, query_idx] for b, (query_idx, _) in enumerate(indices)]).float()
        if logits.numel() == 0:
            return quality.sum() * 0.0
        pred = torch.cat([boxes[b, query_idx] for b, (query_idx, _) in enumerate(indices)]).detach().float()
        gt = torch.cat([t["boxes"][target_idx] for t, (_, target_idx) in zip(targets, indices, strict=True)])
        iou = pairwise_iou(pred, gt.to(device=pred.device, dtype=torch.float32)).diagonal()
        return F.binary_cross_entropy_with_logits(logits, iou)

    def loss_presence(self, logits: torch.Tensor, targets: list[Target]) -> torch.Tensor:
        """Binary cross-entropy of each annotated organ's presence logit: 1 when it has a box in the sample, 0 when
        the sample annotates it but it is not there (cut off by the field of view); unannotated organs are left out."""
        logits = logits.float()
        truth = torch.zeros_like(logits)
        for b, target in enumerate(targets):
            truth[b, target["labels"].to(logits.device)] = 1.0
        known = self.annotated(targets, logits.device)
        if not known.any():
            return logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(logits[known], truth[known])

    def loss_seg(self, seg_logits: list[torch.Tensor], targets: list[Target]) -> torch.Tensor:
        """Cross-entropy on ``[background + annotated organs]`` channels (weighted by ``seg_class_weights``) plus Dice
        on the annotated organs present in the sample, per level and sample, averaged over both."""
        label_maps = torch.stack([t["label_map"] for t in targets])
        losses = []
        for level_logits in seg_logits:
            resized = F.interpolate(
                label_maps[:, None].to(level_logits.device, torch.float32),
                size=level_logits.shape[2:],
                mode="nearest-exact",
            )
            losses.append(self._seg_losses(level_logits, resized[:, 0].long(), targets))
        return torch.cat(losses).mean()

    def loss_seg_fine(self, fine: list[FineLogits | None], targets: list[Target]) -> torch.Tensor:
        """:meth:`loss_seg` of the fine stage's logits against each sample's label map in its region, averaged over
        the samples that have a region (0 when none has: no organ to segment finer, and the same loss terms on every
        rank)."""
        losses = [
            self._seg_losses(item.logits[None], target["label_map"][item.region][None].long(), [target])
            for item, target in zip(fine, targets, strict=True)
            if item is not None
        ]
        if not losses:
            return self.seg_class_weight.new_zeros(())
        return torch.cat(losses).mean()

    def _seg_losses(self, logits: torch.Tensor, labels: torch.Tensor, targets: list[Target]) -> torch.Tensor:
        """Each sample's segmentation loss ``[B]``: ``logits [B, K+1, *grid]``, ``labels`` label values on that grid.

        The whole batch at once (a loop over samples launches ~25 kernels per sample, which bounds a GPU step): the
        logits of a sample's unannotated organs are set to ``-inf``, which is their removal from its softmax."""
        logits = logits.float()
        labels = labels.to(logits.device)
        batch = labels.shape[0]
        keep = F.pad(self.annotated(targets, logits.device), (1, 0), value=True)  # + background
        # Voxels of an unannotated label (inconsistent target) count as background, like every voxel of an organ
        # that was not annotated.
        samples = torch.arange(batch, device=logits.device).view(batch, *([1] * (labels.dim() - 1)))
        truth = torch.where(keep[samples, labels], labels, 0)
        kept = logits.masked_fill(~keep.view(*keep.shape, *([1] * (logits.dim() - 2))), float("-inf"))
        voxel_losses = F.cross_entropy(kept, truth, weight=self.seg_class_weight, reduction="none").flatten(1)
        cross_entropy = voxel_losses.sum(dim=1) / self.seg_class_weight[truth].flatten(1).sum(dim=1)
        onehot = F.one_hot(truth, self.num_classes + 1).movedim(-1, 1).float()
        present = onehot[:, 1:].flatten(2).any(dim=2)  # [B, K]: annotated organs with voxels in the sample
        dice = self.dice(kept.softmax(dim=1), onehot).flatten(1)  # [B, K], background excluded
        # Mean Dice over each sample's present organs (0 without any); a masked sum keeps absent terms' gradients out.
        dice_mean = torch.where(present, dice, 0.0).sum(dim=1) / present.sum(dim=1).clamp(min=1)
        return cross_entropy + dice_mean

    def detection_losses(self, outputs: dict[str, Any], targets: list[Target]) -> dict[str, torch.Tensor]:
        """Match one decoder layer's outputs and compute its classification and box losses."""
        indices = self.matcher(outputs, targets)
        num_positives = max(float(sum(q.numel() for q, _ in indices)), 1.0)
        losses = {"loss_class": self.loss_class(outputs["pred_logits"], targets, indices)}
        losses.update(self.loss_boxes(outputs["pred_boxes"], targets, indices, num_positives))
        if "pred_quality" in outputs:
            losses["loss_quality"] = self.loss_quality(outputs["pred_quality"], outputs["pred_boxes"], targets, indices)
        return losses

    def forward(self, outputs: dict[str, Any], targets: list[Target]) -> dict[str, torch.Tensor]:
        losses = self.detection_losses(outputs, targets)
        if self.config.aux_loss:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                losses.update({f"{name}_aux{i}": value for name, value in self.detection_losses(aux, targets).items()})
        seg_logits = outputs.get("seg_logits")
        if "pred_presence" in outputs:
            losses["loss_presence"] = self.loss_presence(outputs["pred_presence"], targets)
        have_label_maps = all(t.get("label_map") is not None for t in targets)
        if seg_logits and have_label_maps:
            losses["loss_seg"] = self.loss_seg(seg_logits, targets)
        if "seg_full_logits" in outputs and have_label_maps:
            losses["loss_seg_branch"] = self.loss_seg([outputs["seg_full_logits"]], targets)
        if "seg_fine_logits" in outputs and have_label_maps:
            losses["loss_seg_fine"] = self.loss_seg_fine(outputs["seg_fine_logits"], targets)
        losses["loss"] = sum(self.weights[name.split("_aux")[0]] * value for name, value in losses.items())
        return losses
