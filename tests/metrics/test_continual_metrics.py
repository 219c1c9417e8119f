import math

import numpy as np
import pytest

from oneformore.metrics import ContinualMatrix, average_accuracy, backward_transfer, continual_summary, forgetting

NAN = float("nan")
# R[t, j]: metric on task j after learning task t (0-based), NaN above the diagonal (not measured).
R = np.array(
    [
        [0.90, NAN, NAN, NAN],
        [0.80, 0.95, NAN, NAN],
        [0.85, 0.70, 0.99, NAN],
        [0.60, 0.75, 0.90, 0.88],
    ]
)


def test_hand_computed_values():
    assert average_accuracy(R) == pytest.approx((0.60 + 0.75 + 0.90 + 0.88) / 4)
    # FM: j=0: max(0.90, 0.80, 0.85) - 0.60 = 0.30; j=1: max(0.95, 0.70) - 0.75 = 0.20; j=2: 0.99 - 0.90 = 0.09
    assert forgetting(R) == pytest.approx((0.30 + 0.20 + 0.09) / 3)
    # BWT: (0.60 - 0.90) + (0.75 - 0.95) + (0.90 - 0.99), over 3
    assert backward_transfer(R) == pytest.approx((-0.30 - 0.20 - 0.09) / 3)


def test_single_task_and_matrix_builder():
    s = continual_summary([[0.7]])
    assert s["acc"] == 0.7 and math.isnan(s["fm"]) and math.isnan(s["bwt"])
    cm = ContinualMatrix(2)
    cm.record(0, 0, 0.9)
    cm.record_categories(1, 0, [0.8, 0.6])
    cm.record(1, 1, 1.0)
    assert cm.summary() == pytest.approx({"acc": 0.85, "fm": 0.2, "bwt": -0.2})
    with pytest.raises(ValueError, match="task <= after_task"):
        cm.record(0, 1, 0.5)


def test_missing_entries_rejected():
    bad = R.copy()
    bad[2, 1] = NAN
    with pytest.raises(ValueError, match="must be measured"):
        forgetting(bad)
    with pytest.raises(ValueError, match="square"):
        average_accuracy(np.zeros((2, 3)))
