"""The losses of CoactSeg: soft Dice per head, the relation regulariser, and their schedule.

Two kinds of samples share a batch. Two-time-point (longitudinal) samples carry new-lesion
labels and supervise the new-lesion head; single-time-point samples carry all-lesion labels and
supervise the baseline and follow-up heads. Pairs whose all-lesion masks are known at both
time points (synthetic pairs know them exactly) supervise the two all-lesion heads too. The
relation regulariser ties the heads together: on new-lesion voxels the baseline head should say
"no lesion" and the follow-up head "lesion"; on a single scan (no change between the "time
points") both all-lesion heads should agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from msnewlesion.model.network import CoactSegOutput, lesion_probabilities

__all__ = ["LossTerms", "LossWeights", "coactseg_loss", "relation_regulariser", "soft_dice_loss"]


def soft_dice_loss(probabilities: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Soft Dice loss pooled over every voxel of the batch: ``1 − (2Σpg + ε) / (Σp + Σg + ε)``.

    Parameters
    ----------
    probabilities : Tensor
        Lesion probabilities, any shape.
    target : Tensor
        Binary labels of the same shape.
    eps : float
        Keeps the loss defined (and 0) when both are empty.

    Examples
    --------
    >>> p = torch.tensor([0.5, 0.5, 0.0]); g = torch.tensor([1.0, 0.0, 0.0])
    >>> round(float(soft_dice_loss(p, g)), 4)  # 1 − 2·0.5 / (1 + 1)
    0.5
    """
    target = target.to(probabilities.dtype)
    intersection = 2.0 * torch.sum(probabilities * target) + eps
    denominator = torch.sum(probabilities) + torch.sum(target) + eps
    return 1.0 - intersection / denominator


def _head_loss(
    logits: torch.Tensor, probabilities: torch.Tensor, target: torch.Tensor, cross_entropy: float
) -> torch.Tensor:
    loss = soft_dice_loss(probabilities, target)
    if cross_entropy > 0:
        # the lesion logit is the difference of the two classes' logits (softmax over two = sigmoid)
        lesion_logit = logits[:, 1] - logits[:, 0]
        loss = loss + cross_entropy * F.binary_cross_entropy_with_logits(lesion_logit, target.to(lesion_logit.dtype))
    return loss


def _zero_like(*tensors: torch.Tensor | None) -> torch.Tensor:
    # A zero that stays connected to the graph, so every parameter still receives a gradient
    # (DistributedDataParallel requires it) when a term has nothing to act on.
    present = [t for t in tensors if t is not None]
    return sum((t.sum() * 0.0 for t in present), torch.zeros(()))  # type: ignore[return-value]


def relation_regulariser(
    longitudinal_baseline: torch.Tensor | None,
    longitudinal_followup: torch.Tensor | None,
    new_lesion_target: torch.Tensor | None,
    single_baseline: torch.Tensor | None,
    single_followup: torch.Tensor | None,
) -> torch.Tensor:
    """The longitudinal relation regulariser L_rr, a mean squared error on probabilities.

    ``mean(p1² over new-lesion voxels) + mean((p2 − 1)² over new-lesion voxels)`` on the
    two-time-point samples, plus ``mean((p1 − p2)²)`` over every voxel of the single-time-point
    samples. A batch without a new-lesion voxel (where the reference code divides by zero and
    returns NaN) contributes 0 for the first two terms; an absent kind contributes 0.

    Parameters
    ----------
    longitudinal_baseline, longitudinal_followup : Tensor or None
        Baseline-head and follow-up-head lesion probabilities of the two-time-point samples.
    new_lesion_target : Tensor or None
        Their new-lesion labels.
    single_baseline, single_followup : Tensor or None
        Baseline-head and follow-up-head lesion probabilities of the single-time-point samples.
    """
    total = _zero_like(longitudinal_baseline, longitudinal_followup, single_baseline, single_followup)
    if longitudinal_baseline is not None and longitudinal_followup is not None and new_lesion_target is not None:
        new_voxels = new_lesion_target > 0
        if bool(new_voxels.any()):
            total = total + torch.mean(longitudinal_baseline[new_voxels] ** 2)
            total = total + torch.mean((longitudinal_followup[new_voxels] - 1.0) ** 2)
    if single_baseline is not None and single_followup is not None and single_baseline.numel():
        total = total + torch.mean((single_baseline - single_followup) ** 2)
    return total


@dataclass(frozen=True)
class LossWeights:
    """Weights of equation 4 of the paper and when the regulariser starts.

    ``L = L_al + new_lesion · L_nl + relation(iteration) · L_rr`` where ``relation(iteration)`` is 0
    before ``relation_start`` (counting iterations from 1) and ``relation`` from then on.

    ``cross_entropy`` adds that much binary cross-entropy to each head's soft Dice (0 in the paper).
    Dice alone scores a head by its overlap with the lesions and barely notices scattered false
    positives in a large background, or a head that calls everything lesion; the voxel-wise
    cross-entropy does.
    """

    new_lesion: float = 1.0
    relation: float = 1.0
    relation_start: int = 10_000
    cross_entropy: float = 0.0

    def relation_weight(self, iteration: int) -> float:
        return self.relation if iteration >= self.relation_start else 0.0


@dataclass(frozen=True)
class LossTerms:
    """The total loss and its parts (the parts detached, for logging)."""

    total: torch.Tensor
    all_lesion: float
    new_lesion: float
    relation: float
    relation_weight: float


def coactseg_loss(
    output: CoactSegOutput,
    target: torch.Tensor,
    longitudinal: torch.Tensor,
    *,
    iteration: int,
    weights: LossWeights | None = None,
    lesions: torch.Tensor | None = None,
    lesions_known: torch.Tensor | None = None,
) -> LossTerms:
    """The CoactSeg training loss for one mixed batch.

    Parameters
    ----------
    output : CoactSegOutput
        The network's logits for the batch.
    target : Tensor
        Labels of shape (N, X, Y, Z): new lesions for two-time-point samples, all lesions for
        single-time-point samples.
    longitudinal : Tensor
        Boolean of shape (N,): which samples are two-time-point ones.
    iteration : int
        The training iteration being taken, counting from 1 (drives the regulariser's schedule).
    weights : LossWeights, optional
        λ1, λ2 and the iteration λ2 starts at; the paper's values by default.
    lesions : Tensor, optional
        All-lesion targets of the baseline and follow-up heads, shape (2, N, X, Y, Z).
    lesions_known : Tensor, optional
        Boolean of shape (N,): which samples have ``lesions``. Without these two, the all-lesion heads
        learn from the single-time-point samples' labels only (the paper's loss).
    """
    weights = weights or LossWeights()
    longitudinal = longitudinal.to(torch.bool).to(target.device)
    single = ~longitudinal
    p_baseline = lesion_probabilities(output.baseline.float())
    p_followup = lesion_probabilities(output.followup.float())
    p_new = lesion_probabilities(output.new.float())

    if lesions is None or lesions_known is None:
        supervised, baseline_target, followup_target = single, target, target
    else:
        supervised = lesions_known.to(torch.bool).to(target.device)
        baseline_target, followup_target = lesions[0], lesions[1]
    ce = weights.cross_entropy
    all_lesion = _zero_like(p_baseline, p_followup)
    if bool(supervised.any()):
        all_lesion = all_lesion + _head_loss(
            output.baseline[supervised].float(), p_baseline[supervised], baseline_target[supervised], ce
        )
        all_lesion = all_lesion + _head_loss(
            output.followup[supervised].float(), p_followup[supervised], followup_target[supervised], ce
        )
    new_lesion = _zero_like(p_new)
    if bool(longitudinal.any()):
        new_lesion = new_lesion + _head_loss(
            output.new[longitudinal].float(), p_new[longitudinal], target[longitudinal], ce
        )

    has_longitudinal = bool(longitudinal.any())
    has_single = bool(single.any())
    relation = relation_regulariser(
        p_baseline[longitudinal] if has_longitudinal else None,
        p_followup[longitudinal] if has_longitudinal else None,
        target[longitudinal] if has_longitudinal else None,
        p_baseline[single] if has_single else None,
        p_followup[single] if has_single else None,
    )
    relation_weight = weights.relation_weight(iteration)
    total = all_lesion + weights.new_lesion * new_lesion + relation_weight * relation
    return LossTerms(
        total=total,
        all_lesion=float(all_lesion.detach()),
        new_lesion=float(new_lesion.detach()),
        relation=float(relation.detach()),
        relation_weight=relation_weight,
    )
