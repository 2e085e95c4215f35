from __future__ import annotations

import math

import pytest
import torch

from msnewlesion.model.losses import LossWeights, coactseg_loss, relation_regulariser, soft_dice_loss
from msnewlesion.model.network import CoactSegOutput


def logits_for(probabilities: torch.Tensor) -> torch.Tensor:
    """Two-class logits whose softmax channel 1 is ``probabilities``."""
    p = probabilities.clamp(1e-6, 1 - 1e-6)
    return torch.stack((torch.zeros_like(p), torch.log(p / (1 - p))), dim=1)


def test_soft_dice_by_hand() -> None:
    p = torch.tensor([0.5, 0.5, 0.0, 0.0])
    g = torch.tensor([1.0, 0.0, 0.0, 1.0])
    # 1 − 2·0.5 / (1.0 + 2)
    assert float(soft_dice_loss(p, g)) == pytest.approx(1 - 1.0 / 3.0, abs=1e-7)
    assert float(soft_dice_loss(g, g)) == pytest.approx(0.0, abs=1e-7)
    assert float(soft_dice_loss(1 - g, g)) == pytest.approx(1.0, abs=1e-7)


def test_soft_dice_of_two_empty_masks_is_zero_not_nan() -> None:
    empty = torch.zeros(2, 4, 4, 4)
    assert float(soft_dice_loss(empty, empty)) == 0.0


def test_soft_dice_pools_over_the_batch() -> None:
    p = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # pooled: 1 − 2·1 / (1 + 2), not the mean of per-sample losses (0 and 1)
    assert float(soft_dice_loss(p, g)) == pytest.approx(1 / 3, abs=1e-7)


def test_relation_regulariser_by_hand() -> None:
    new = torch.tensor([[1, 1, 0, 0]])
    p1_long = torch.tensor([[0.2, 0.4, 0.9, 0.9]])  # only new-lesion voxels count: (0.04 + 0.16) / 2
    p2_long = torch.tensor([[0.9, 0.5, 0.1, 0.0]])  # (0.01 + 0.25) / 2
    p1_single = torch.tensor([[0.1, 0.5]])
    p2_single = torch.tensor([[0.2, 0.2]])  # (0.01 + 0.09) / 2
    value = relation_regulariser(p1_long, p2_long, new, p1_single, p2_single)
    assert float(value) == pytest.approx(0.10 + 0.13 + 0.05, abs=1e-6)


def test_relation_regulariser_without_new_lesion_voxels_is_finite_and_keeps_gradients() -> None:
    p1 = torch.full((1, 4), 0.3, requires_grad=True)
    p2 = torch.full((1, 4), 0.6, requires_grad=True)
    single_a = torch.tensor([[0.5, 0.5]], requires_grad=True)
    single_b = torch.tensor([[0.1, 0.5]])
    value = relation_regulariser(p1, p2, torch.zeros(1, 4), single_a, single_b)
    assert math.isfinite(float(value.detach()))
    assert float(value.detach()) == pytest.approx(0.08, abs=1e-6)  # only the single-scan term: (0.16 + 0) / 2
    value.backward()
    assert p1.grad is not None and torch.all(p1.grad == 0)


def make_output(p_baseline: torch.Tensor, p_followup: torch.Tensor, p_new: torch.Tensor) -> CoactSegOutput:
    return CoactSegOutput(logits_for(p_baseline), logits_for(p_followup), logits_for(p_new))


def test_combined_loss_follows_the_stage_schedule() -> None:
    # sample 0 is longitudinal (new-lesion label), sample 1 is a single scan (all-lesion label)
    target = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).reshape(2, 2, 1, 1)
    p_baseline = torch.tensor([[0.5, 0.5], [1.0, 0.0]]).reshape(2, 2, 1, 1)
    p_followup = torch.tensor([[0.5, 0.5], [1.0, 1.0]]).reshape(2, 2, 1, 1)
    p_new = torch.tensor([[1.0, 0.0], [0.3, 0.3]]).reshape(2, 2, 1, 1)
    output = make_output(p_baseline, p_followup, p_new)
    longitudinal = torch.tensor([True, False])
    weights = LossWeights(new_lesion=2.0, relation=3.0, relation_start=100)

    all_lesion = (1 - 2 * 1 / (1 + 2)) + 0.0  # head 1 finds half the lesion; head 2 all of it
    new_lesion = 0.0
    relation = 0.25 + 0.25 + 0.5  # (0.5)² + (0.5 − 1)² on the new voxel; mean((0, 1)²) on the single scan

    early = coactseg_loss(output, target, longitudinal, iteration=99, weights=weights)
    assert early.relation_weight == 0.0
    assert early.all_lesion == pytest.approx(all_lesion, abs=1e-4)
    assert early.new_lesion == pytest.approx(new_lesion, abs=1e-4)
    assert early.relation == pytest.approx(relation, abs=1e-4)
    assert float(early.total) == pytest.approx(all_lesion + 2.0 * new_lesion, abs=1e-4)

    late = coactseg_loss(output, target, longitudinal, iteration=100, weights=weights)
    assert late.relation_weight == 3.0
    assert float(late.total) == pytest.approx(all_lesion + 2.0 * new_lesion + 3.0 * relation, abs=1e-4)


def test_combined_loss_with_one_kind_only() -> None:
    target = torch.zeros(2, 4, 4, 4)
    target[:, 1:3, 1:3, 1:3] = 1
    output = make_output(torch.full((2, 4, 4, 4), 0.5), torch.full((2, 4, 4, 4), 0.5), torch.full((2, 4, 4, 4), 0.5))
    only_single = coactseg_loss(output, target, torch.tensor([False, False]), iteration=1)
    assert only_single.new_lesion == 0.0 and only_single.all_lesion > 0
    only_longitudinal = coactseg_loss(output, target, torch.tensor([True, True]), iteration=20_000)
    assert only_longitudinal.all_lesion == 0.0 and only_longitudinal.new_lesion > 0
    assert math.isfinite(float(only_longitudinal.total))


def test_default_weights_are_the_papers() -> None:
    weights = LossWeights()
    assert (weights.new_lesion, weights.relation, weights.relation_start) == (1.0, 1.0, 10_000)
    assert weights.relation_weight(9_999) == 0.0 and weights.relation_weight(10_000) == 1.0


def test_pairs_with_known_all_lesion_masks_supervise_both_all_lesion_heads() -> None:
    # sample 0: a pair whose all-lesion masks are known (baseline [1, 0], follow-up [1, 1]);
    # sample 1: a pair without them; sample 2: a single scan (label [0, 1] at both time points)
    target = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]).reshape(3, 2, 1, 1)
    lesions = torch.tensor(
        [[[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]]]
    ).reshape(2, 3, 2, 1, 1)
    known = torch.tensor([True, False, True])
    p_baseline = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.5]]).reshape(3, 2, 1, 1)
    p_followup = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]).reshape(3, 2, 1, 1)
    output = make_output(p_baseline, p_followup, torch.zeros(3, 2, 1, 1))
    terms = coactseg_loss(
        output, target, torch.tensor([True, True, False]), iteration=1, lesions=lesions, lesions_known=known
    )
    # pooled over samples 0 and 2 only (sample 1's all-lesion predictions are not judged):
    # head 1: Σpg = 1 + 0.5, Σp = 1 + 0.5, Σg = 1 + 1 → 1 − 3 / 3.5; head 2: Σpg = 1 + 1, Σp = 2, Σg = 3 → 1 − 4 / 5
    assert terms.all_lesion == pytest.approx((1 - 3 / 3.5) + (1 - 4 / 5), abs=1e-4)
    # without the masks, only the single scan supervises them (the paper's loss)
    paper = coactseg_loss(output, target, torch.tensor([True, True, False]), iteration=1)
    assert paper.all_lesion == pytest.approx((1 - 1 / 1.5) + (1 - 2 / 2), abs=1e-4)


def test_cross_entropy_sees_what_dice_barely_does() -> None:
    # one lesion voxel found exactly; 999 background voxels at probability 0.3 (scattered false positives)
    target = torch.zeros(1, 1000)
    target[0, 0] = 1.0
    probabilities = torch.full((1, 1000), 0.3)
    probabilities[0, 0] = 1.0 - 1e-6
    output = make_output(probabilities, probabilities, probabilities)
    longitudinal = torch.tensor([True])
    plain = coactseg_loss(output, target, longitudinal, iteration=1)
    with_ce = coactseg_loss(output, target, longitudinal, iteration=1, weights=LossWeights(cross_entropy=1.0))
    background_ce = -math.log(0.7) * 999 / 1000
    assert with_ce.new_lesion == pytest.approx(plain.new_lesion + background_ce, abs=1e-3)
    assert LossWeights().cross_entropy == 0.0  # the paper's loss by default
