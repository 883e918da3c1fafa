"""Metrics against hand-computed matrices."""

import math

import numpy as np
import pytest

from spacil.evaluation.metrics import IncrementalMetrics, backward_transfer, evaluate_stage, forgetting, summarize


def test_forgetting_and_bwt_hand_computed():
    nan = np.nan
    R = np.array([[90.0, nan, nan], [80.0, 70.0, nan], [60.0, 65.0, 50.0]])
    # forgetting: task0 max(90, 80) - 60 = 30; task1 max(70) - 65 = 5 -> 17.5
    assert forgetting(R) == pytest.approx(17.5)
    # bwt: (60 - 90) + (65 - 70) = -35 / 2
    assert backward_transfer(R) == pytest.approx(-17.5)
    s = summarize(R, [90.0, 76.0, 58.0])
    assert s["average_accuracy"] == pytest.approx(74.6666666)
    assert s["last_accuracy"] == 58.0


def test_forgetting_uses_max_not_first():
    R = np.array([[50.0, np.nan, np.nan], [70.0, 80.0, np.nan], [40.0, 80.0, 10.0]])
    assert forgetting(R) == pytest.approx(((70 - 40) + (80 - 80)) / 2)
    assert backward_transfer(R) == pytest.approx(((40 - 50) + (80 - 80)) / 2)


def test_forgetting_max_includes_the_last_stage_as_pycil_does():
    nan = np.nan
    # task 0 is best at the last stage (60 > 55 > 40): PyCIL counts 0 for it, a max over earlier stages only
    # would count 55 - 60 = -5; task 1: max(70, 65) - 65 = 5
    R = np.array([[40.0, nan, nan], [55.0, 70.0, nan], [60.0, 65.0, 50.0]])
    assert forgetting(R) == pytest.approx((0 + 5) / 2)
    # the same number from PyCIL's own line on its transposed, zero-filled table (task x stage)
    acctable = np.nan_to_num(R).T
    task = R.shape[0] - 1
    assert forgetting(R) == pytest.approx(np.mean((np.max(acctable, axis=1) - acctable[:, task])[:task]))


def test_forgetting_is_never_negative_when_every_old_task_improves():
    R = np.array([[10.0, np.nan], [30.0, 50.0]])
    assert forgetting(R) == pytest.approx(0.0)  # not 10 - 30 = -20
    assert backward_transfer(R) == pytest.approx(20.0)


def test_single_stage_has_no_forgetting():
    assert forgetting(np.array([[88.0]])) is None
    assert backward_transfer(np.array([[88.0]])) is None


def test_init_cls_differs_from_increment_stage_accuracy_is_sample_weighted():
    # B4 Inc2: task 0 = labels 0..3, task 1 = labels 4..5
    task_of_label = np.array([0, 0, 0, 0, 1, 1])
    targets = np.array([0, 1, 2, 3, 0, 1, 2, 3, 4, 5])
    preds = np.array([0, 1, 2, 0, 0, 1, 2, 3, 4, 0])  # task0: 7/8 correct, task1: 1/2
    res = evaluate_stage(1, preds, targets, task_of_label)
    assert res.per_task == pytest.approx([87.5, 50.0])
    assert res.accuracy == pytest.approx(80.0)  # 8/10, not mean(87.5, 50) = 68.75
    assert res.old_accuracy == pytest.approx(87.5)
    assert res.new_accuracy == pytest.approx(50.0)


def test_incremental_metrics_builds_matrix():
    m = IncrementalMetrics(n_tasks=2)
    m.add(evaluate_stage(0, np.array([0, 1, 1]), np.array([0, 1, 0]), np.array([0, 0, 1, 1])))
    m.add(evaluate_stage(1, np.array([0, 1, 2, 2]), np.array([0, 1, 2, 3]), np.array([0, 0, 1, 1])))
    R = m.accuracy_matrix
    assert R[0, 0] == pytest.approx(200 / 3)
    assert math.isnan(R[0, 1])
    assert R[1].tolist() == pytest.approx([100.0, 50.0])
    # task 0 went from 66.7 to 100: its best is the last stage, so it forgot nothing
    assert m.summary()["forgetting"] == pytest.approx(0.0)
    assert m.summary()["bwt"] == pytest.approx(100 - 200 / 3)
    with pytest.raises(ValueError):
        m.add(evaluate_stage(5, np.array([0]), np.array([0]), np.array([0])))
