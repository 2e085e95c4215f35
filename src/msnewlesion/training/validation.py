"""Validation during training: the network's new-lesion and all-lesion scores on the validation samples."""

from __future__ import annotations

import math

import numpy as np
import torch

from msnewlesion.inference import SlidingWindowOptions, sliding_window_predict
from msnewlesion.metrics import evaluate_case
from msnewlesion.model.network import CoactSeg
from msnewlesion.training.config import TrainConfig
from msnewlesion.training.data import TrainingSample

__all__ = ["validate"]


def validate(
    network: CoactSeg, samples: list[TrainingSample], config: TrainConfig, device: torch.device
) -> dict[str, float]:
    """The validation metrics of ``network`` on the validation samples (the ``val_*`` columns of the log)."""
    options = SlidingWindowOptions(
        patch_size=(config.patch_size,) * 3,
        overlap=config.val_overlap,
        precision="fp32" if device.type == "cpu" else "auto",
    )
    new_dice, new_f1, all_dice = [], [], []
    detected_ref = refs = detected_pred = preds = false_positives = 0
    # sliding_window_predict runs an eval-mode copy: the training network's state is never touched
    for sample in samples:
        maps = sliding_window_predict(
            network,
            sample.baseline,
            sample.followup if sample.longitudinal else None,
            options=options,
            brain_mask=sample.brain,
            device=device,
        )
        if sample.longitudinal:
            result = evaluate_case(maps.new > 0.5, sample.label > 0, sample.spacing)
            detected_ref += result.n_detected_ref_lesions
            refs += result.n_ref_lesions
            detected_pred += result.n_detected_pred_lesions
            preds += result.n_pred_lesions
            false_positives += result.n_fp_lesions
            if result.n_ref_lesions:  # pairs without new lesions count by their false positives only
                new_dice.append(result.dice)
                new_f1.append(result.lesion_f1)
        else:
            result = evaluate_case(maps.baseline > 0.5, sample.label > 0, sample.spacing)
            all_dice.append(result.dice)

    def mean(values: list[float]) -> float:
        finite = [v for v in values if v is not None and math.isfinite(v)]
        return float(np.mean(finite)) if finite else float("nan")

    sensitivity = detected_ref / refs if refs else float("nan")
    ppv = detected_pred / preds if preds else (1.0 if refs else float("nan"))
    pooled_f1 = 2 * sensitivity * ppv / (sensitivity + ppv) if sensitivity + ppv > 0 else 0.0
    metrics = {
        "val_new_lesion_dice": mean(new_dice),
        "val_new_lesion_f1": mean(new_f1),
        "val_new_lesion_pooled_f1": pooled_f1 if refs else float("nan"),
        "val_false_positive_lesions": float(false_positives),
        "val_all_lesion_dice": mean(all_dice),
    }
    present = [v for v in (metrics["val_new_lesion_dice"], metrics["val_all_lesion_dice"]) if math.isfinite(v)]
    metrics["val_mean_dice"] = float(np.mean(present)) if present else float("nan")
    return metrics
