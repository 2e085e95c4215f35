"""Synthetic new lesions that the simulated acquisition erased are dropped from the labels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from msnewlesion.synth.visibility import visible_new_lesions


def _pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    baseline = rng.normal(100.0, 2.0, (40, 40, 40))
    followup = 1.3 * baseline  # another acquisition: another scale, no change
    label = np.zeros(baseline.shape, bool)
    label[5:9, 5:9, 5:9] = True  # painted at 1.4 × and still bright
    followup[5:9, 5:9, 5:9] *= 1.4
    label[20:23, 20:23, 20:23] = True  # painted, then blurred away by a thick slice: 2 % brighter
    followup[20:23, 20:23, 20:23] *= 1.02
    return baseline, followup, label


def test_erased_lesion_is_dropped_and_visible_one_kept() -> None:
    baseline, followup, label = _pair()
    result = visible_new_lesions(baseline, followup, label, np.ones(label.shape, bool))
    assert result.rises == pytest.approx((0.4, 0.02), abs=0.01)  # per time point scale taken out
    assert result.dropped == (2,)
    assert int(result.new_lesions.sum()) == 64
    assert result.new_lesions[6, 6, 6] and not result.new_lesions[21, 21, 21]
    assert int(result.dropped_mask.sum()) == 27 and result.dropped_mask[21, 21, 21]


def test_threshold_is_the_callers() -> None:
    baseline, followup, label = _pair()
    result = visible_new_lesions(baseline, followup, label, np.ones(label.shape, bool), min_rise=0.01)
    assert result.dropped == ()
    assert np.array_equal(result.new_lesions, label)
    strict = visible_new_lesions(baseline, followup, label, np.ones(label.shape, bool), min_rise=0.5)
    assert strict.dropped == (1, 2) and not strict.new_lesions.any()


def test_empty_label_and_bad_inputs() -> None:
    baseline, followup, _ = _pair()
    empty = visible_new_lesions(baseline, followup, np.zeros(baseline.shape, bool), np.ones(baseline.shape, bool))
    assert empty.rises == () and not empty.new_lesions.any() and not empty.dropped_mask.any()
    with pytest.raises(ValueError, match="one shape"):
        visible_new_lesions(baseline, followup[:-1], np.zeros(baseline.shape, bool), np.ones(baseline.shape, bool))
    with pytest.raises(ValueError, match="positive intensity"):
        visible_new_lesions(baseline, followup, np.zeros(baseline.shape, bool), np.zeros(baseline.shape, bool))


def test_lesions_are_counted_with_26_connectivity() -> None:
    baseline, followup, label = _pair()
    assert ndimage.label(label, np.ones((3, 3, 3)))[1] == 2
    followup[9, 9, 9] *= 1.4  # touches the first lesion only at a corner: the same lesion
    label[9, 9, 9] = True
    result = visible_new_lesions(baseline, followup, label, np.ones(label.shape, bool))
    assert len(result.rises) == 2
