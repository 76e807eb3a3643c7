from __future__ import annotations

import numpy as np
import pytest
import torch

from agrnet.data.classes import LabelSpec
from agrnet.metrics import ConfusionMatrix, merged_f1, summarize

SPEC3 = LabelSpec("t", ("bg", "a", "b"), ())


def test_confusion_matrix_counts_and_ignores_255() -> None:
    target = torch.tensor([[0, 1, 1, 2], [2, 2, 255, 0]])
    pred = torch.tensor([[0, 1, 2, 2], [2, 1, 1, 1]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    expected = np.array([[1, 1, 0], [0, 1, 1], [0, 1, 2]])
    assert np.array_equal(cm.matrix.numpy(), expected)
    assert cm.matrix.sum() == (target != 255).sum()


def test_summary_by_hand() -> None:
    m = np.array([[1, 1, 0], [0, 1, 1], [0, 1, 2]])
    s = summarize(m, SPEC3)
    # class a: TP 1, GT 2, Pred 3 -> F1 2/5, IoU 1/4, acc 1/2. class b: TP 2, GT 3, Pred 3 -> F1 2/3, IoU 1/2.
    assert s["per_class"]["a"]["f1"] == pytest.approx(0.4)
    assert s["per_class"]["a"]["iou"] == pytest.approx(0.25)
    assert s["per_class"]["b"]["accuracy"] == pytest.approx(2 / 3)
    assert s["mean_f1"] == pytest.approx((0.4 + 2 / 3) / 2)  # background excluded
    bg_iou = 1 / (2 + 1 - 1)
    assert s["mean_iou"] == pytest.approx((bg_iou + 0.25 + 0.5) / 3)
    assert s["mean_iou_no_bg"] == pytest.approx((0.25 + 0.5) / 2)
    assert s["pixel_accuracy"] == pytest.approx(4 / 7)


def test_absent_class_is_left_out_of_means() -> None:
    m = np.array([[3, 0, 0], [0, 2, 0], [0, 0, 0]])
    s = summarize(m, SPEC3)
    assert np.isnan(s["per_class"]["b"]["f1"]) and s["mean_f1"] == pytest.approx(1.0)


def test_helen_merged_f1_counts_confusions_inside_a_group() -> None:
    m = np.zeros((11, 11))
    m[4, 5] = 10  # left eye predicted as right eye: wrong per class, right for "eyes"
    m[5, 5] = 10
    m[2, 0] = 5  # a brow missed entirely
    m[0, 0] = 100
    f1 = merged_f1(m)
    assert f1["eyes"] == pytest.approx(1.0)
    assert f1["brows"] == pytest.approx(0.0)
    assert f1["overall"] == pytest.approx(2 * 20 / (25 + 20))
