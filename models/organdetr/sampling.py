"""Which cases a training epoch visits: uniformly, or with the cases of rarely annotated organs more often.

Partial labels make some organs rare (OpenKBP: esophagus in 59 of 170 training cases, larynx in 81). With
``power > 0`` a case's weight is ``max over its annotated organs of (cases / cases annotating that organ) ** power``,
and an epoch draws as many cases as there are, with replacement, by those weights. The draw is a pure function of
``(seed, epoch)`` and every rank takes its own slice, as with ``DistributedSampler``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


def rare_organ_weights(annotated: Sequence[torch.Tensor], power: float) -> torch.Tensor:
    """Per case, the sampling weight of the module docstring (``annotated``: one ``[K]`` bool tensor per case)."""
    flags = torch.stack([a.bool() for a in annotated]).float()  # [cases, K]
    frequency = (flags.shape[0] / flags.sum(dim=0).clamp(min=1.0)) ** power  # [K]
    return (flags * frequency).amax(dim=1).clamp(min=1.0)


class RareOrganSampler(torch.utils.data.Sampler[int]):
    """Weighted draw with replacement, split across ranks; ``set_epoch`` as for ``DistributedSampler``."""

    def __init__(self, weights: torch.Tensor, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        self.weights = weights.double()
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.epoch = 0
        self.per_rank = -(-len(weights) // num_replicas)  # ceil: every rank takes the same number of steps

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        draws = torch.multinomial(
            self.weights, self.per_rank * self.num_replicas, replacement=True, generator=generator
        )
        return iter(draws[self.rank :: self.num_replicas].tolist())


class EpochOrder(torch.utils.data.Sampler[tuple[int, int]]):
    """An epoch's case order as ``(epoch, case index)`` keys for :class:`~organdetr.dataset.DetectionDataset`.

    Loader workers that live across epochs (``persistent_workers``) hold their own copy of the dataset, so an epoch
    set on the main process's copy would not reach them; the key carries it instead. :meth:`set` before each epoch.
    """

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []

    def set(self, order: Sequence[int], epoch: int) -> None:
        self.keys = [(epoch, int(index)) for index in order]

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.keys)  # set() replaces the list, never changes it
