"""Global batches do not depend on the number of processes; a short last batch is spread out, never lost."""

from __future__ import annotations

import pytest

from edge_vlm.errors import EdgeVLMError
from edge_vlm.train.batching import BatchPlan


def _step_samples(plan: BatchPlan, order, step: int) -> list[int]:
    """All samples of a step, read slot by slot (micro-step j of process r is slot j * world + r)."""
    per_rank = [plan.micro_batches(order, step, rank) for rank in range(plan.world_size)]
    out = []
    for j in range(plan.grad_accum):
        for rank in range(plan.world_size):
            micro = per_rank[rank][j]
            out += [] if micro.dummy else micro.indices
    return out


@pytest.mark.parametrize("world, per_device", [(1, 8), (1, 2), (2, 4), (2, 1), (4, 2), (8, 1)])
def test_each_step_covers_its_global_batch_whatever_the_world_size(world, per_device):
    plan = BatchPlan(num_samples=37, global_batch=8, per_device=per_device, world_size=world, seed=3)
    reference = BatchPlan(num_samples=37, global_batch=8, per_device=8, world_size=1, seed=3)
    assert plan.steps_per_epoch == 5
    order = plan.epoch_order(0)
    assert order.tolist() == reference.epoch_order(0).tolist()
    seen = []
    for step in range(plan.steps_per_epoch):
        samples = _step_samples(plan, order, step)
        assert samples == reference.global_batch_indices(order, step)
        seen += samples
    assert sorted(seen) == list(range(37))  # every sample once per epoch, the short last batch included


def test_short_last_batch_uses_masked_stand_ins_for_empty_slots():
    plan = BatchPlan(num_samples=9, global_batch=8, per_device=1, world_size=4, seed=0)
    order = plan.epoch_order(0)
    micro = [m for rank in range(4) for m in plan.micro_batches(order, 1, rank)]
    assert sum(not m.dummy for m in micro) == 1 and sum(m.dummy for m in micro) == 7
    assert all(len(m.indices) == 1 for m in micro)


def test_epochs_reshuffle_and_drop_last():
    plan = BatchPlan(num_samples=20, global_batch=8, per_device=4, world_size=1, seed=0)
    assert plan.epoch_order(0).tolist() != plan.epoch_order(1).tolist()
    assert BatchPlan(20, 8, 4, 1, 0, drop_last=True).steps_per_epoch == 2
    with pytest.raises(EdgeVLMError, match="no step would run"):
        BatchPlan(5, 8, 4, 1, 0, drop_last=True)


def test_group_by_length_pads_less_and_keeps_each_epoch_a_permutation():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(20, 300) for _ in range(403)]
    grouped = BatchPlan(403, 16, 8, 1, seed=5, lengths=lengths)
    plain = BatchPlan(403, 16, 8, 1, seed=5)

    def padded(plan, order):  # tokens computed per epoch: every batch is padded to its longest sample
        return sum(max(lengths[i] for i in plan.global_batch_indices(order, s)) * len(plan.global_batch_indices(
            order, s)) for s in range(plan.steps_per_epoch))

    order = grouped.epoch_order(0)
    assert sorted(order.tolist()) == list(range(403))
    assert order.tolist() == BatchPlan(403, 16, 4, 2, seed=5, lengths=lengths).epoch_order(0).tolist()
    assert grouped.epoch_order(1).tolist() != order.tolist()
    assert padded(grouped, order) < 0.8 * padded(plain, plain.epoch_order(0))
    # the steps do not run from long to short: the batches' order is shuffled
    longest = [max(lengths[i] for i in grouped.global_batch_indices(order, s)) for s in range(25)]
    assert longest != sorted(longest, reverse=True)
    assert len(grouped.global_batch_indices(order, 25)) == 403 - 25 * 16  # the short batch stays last
    with pytest.raises(EdgeVLMError, match="lengths"):
        BatchPlan(403, 16, 8, 1, seed=5, lengths=lengths[:-1])
