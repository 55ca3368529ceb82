"""Rare-organ oversampling: weights from annotation counts, reproducible per epoch, split across ranks."""

from __future__ import annotations

import torch
from organdetr.sampling import EpochOrder, RareOrganSampler, rare_organ_weights


def _annotated(rows: list[list[int]]) -> list[torch.Tensor]:
    return [torch.tensor(row, dtype=torch.bool) for row in rows]


def test_weights_follow_the_rarest_annotated_organ():
    # Organ 0 in all 4 cases, organ 1 in one case only.
    annotated = _annotated([[1, 0], [1, 0], [1, 1], [1, 0]])
    assert rare_organ_weights(annotated, 0.0).tolist() == [1.0, 1.0, 1.0, 1.0]
    assert rare_organ_weights(annotated, 0.5).tolist() == [1.0, 1.0, 2.0, 1.0]  # (4 / 1) ** 0.5
    assert rare_organ_weights(annotated, 1.0).tolist() == [1.0, 1.0, 4.0, 1.0]


def test_draws_are_reproducible_per_epoch_and_favour_rare_cases():
    weights = torch.tensor([1.0, 1.0, 8.0, 1.0])
    sampler = RareOrganSampler(weights, seed=3)
    first = list(sampler)
    assert len(first) == len(sampler) == 4 and list(sampler) == first
    counts = torch.zeros(4)
    for epoch in range(200):
        sampler.set_epoch(epoch)
        counts += torch.bincount(torch.tensor(list(sampler)), minlength=4)
    assert counts[2] > 4 * counts[[0, 1, 3]].max()  # drawn about 8x as often as each other case


def test_ranks_take_disjoint_slices_of_one_draw():
    weights = torch.ones(5)
    ranks = [RareOrganSampler(weights, num_replicas=2, rank=r, seed=1) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(4)
    assert len(ranks[0]) == len(ranks[1]) == 3
    generator = torch.Generator().manual_seed(1 * 1_000_003 + 4)
    draw = torch.multinomial(weights.double(), 6, replacement=True, generator=generator).tolist()
    assert list(ranks[0]) == draw[0::2] and list(ranks[1]) == draw[1::2]


class _Keys(torch.utils.data.Dataset):
    """Answers with the key it was asked for (and whether it came as a tuple) and the worker process that answered."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, key):
        return isinstance(key, tuple), key, torch.utils.data.get_worker_info().id


def _as_list(batch):
    return batch


def test_epoch_order_reaches_workers_that_outlive_an_epoch():
    order = EpochOrder()
    loader = torch.utils.data.DataLoader(
        _Keys(), batch_size=2, sampler=order, num_workers=2, persistent_workers=True, collate_fn=_as_list
    )
    seen, workers = [], set()
    for epoch, indices in enumerate(([2, 0, 1], [3, 1])):
        order.set(indices, epoch)
        answers = [answer for batch in loader for answer in batch]
        assert all(is_tuple for is_tuple, _, _ in answers)
        seen.append([key for _, key, _ in answers])
        workers |= {worker for _, _, worker in answers}
    assert seen == [[(0, 2), (0, 0), (0, 1)], [(1, 3), (1, 1)]]
    assert workers == {0, 1} and len(order) == 2
