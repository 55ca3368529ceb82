"""Exponential moving average (EMA) of a model's weights during training (``organdetr train --ema-decay``).

Steps of 2 windows on a CPU make each step's weights noisy: validation swung by +-0.01-0.02 mAP from one epoch to the
next. The running average of the recent weights smooths that noise without slowing the training; DETR-family
detectors (RT-DETR, DINO) ship their EMA weights. PyTorch's :class:`~torch.optim.swa_utils.AveragedModel` keeps the
average: after step t, ``average = decay * average + (1 - decay) * weights``, buffers included, starting from the
weights after the first step. Frozen weights (``--train-only``) stay bit for bit: the average of equal values is
computed as ``torch.lerp``, which returns them exactly.
"""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def averaged_model(model: nn.Module, decay: float) -> AveragedModel:
    """A copy of ``model`` that :meth:`~torch.optim.swa_utils.AveragedModel.update_parameters` moves towards the
    model's weights by ``1 - decay`` per call; the averaged network is its ``module``."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
