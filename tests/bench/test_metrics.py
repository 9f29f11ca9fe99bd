"""Metrics on tiny cases worked out by hand."""

from __future__ import annotations

import pytest

from facesortd.bench.metrics import bcubed, pairwise, score


def test_perfect_clustering_scores_one():
    s = score(["a", "a", "b", "b", "c"], [1, 1, 2, 2, -1])
    assert (s.bcubed_precision, s.bcubed_recall, s.bcubed_f1) == (1.0, 1.0, 1.0)
    assert (s.pairwise_precision, s.pairwise_recall, s.pairwise_f1) == (1.0, 1.0, 1.0)
    assert s.n_clusters == 2 and s.n_true == 3 and s.noise_fraction == pytest.approx(0.2)


def test_everything_in_one_cluster():
    # a a b: one cluster. BCubed P = (2/3 + 2/3 + 1/3)/3 = 5/9, R = 1.
    p, r, f = bcubed(["a", "a", "b"], [0, 0, 0])
    assert p == pytest.approx(5 / 9) and r == 1.0 and f == pytest.approx(2 * 5 / 9 / (1 + 5 / 9))
    # pairs: 3 predicted, 1 true and correct.
    assert pairwise(["a", "a", "b"], [0, 0, 0])[:2] == (pytest.approx(1 / 3), 1.0)


def test_noise_points_are_singletons_not_one_cluster():
    # Two noise points of the same class are not a correct pair: recall (1/2 + 1/2)/2.
    p, r, _ = bcubed(["a", "a"], [-1, -1])
    assert p == 1.0 and r == pytest.approx(0.5)
    assert pairwise(["a", "a"], [-1, -1]) == (1.0, 0.0, 0.0)


def test_split_class():
    # a a a b -> clusters {a a} {a b}: BCubed P = (1 + 1 + 1/2 + 1/2)/4 = 3/4,
    # R = (2/3 + 2/3 + 1/3 + 1)/4 = 2/3; pairwise: predicted 2 pairs, 1 correct; true 3 pairs.
    p, r, _ = bcubed(["a", "a", "a", "b"], [5, 5, 7, 7])
    assert p == pytest.approx(3 / 4) and r == pytest.approx(2 / 3)
    pp, pr, pf = pairwise(["a", "a", "a", "b"], [5, 5, 7, 7])
    assert pp == pytest.approx(1 / 2) and pr == pytest.approx(1 / 3) and pf == pytest.approx(0.4)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        score(["a"], [1, 2])


def test_other_negative_labels_are_clusters():
    # provisional identities (-2, -3) are real clusters; only -1 is noise
    s = score(["a", "a", "b", "b", "c"], [-2, -2, -3, -3, -1])
    assert s.bcubed_f1 == 1.0 and s.n_clusters == 2 and s.noise_fraction == pytest.approx(0.2)
