from collections import Counter

import numpy as np

from phase0_1.runner import assign_splits


def test_sizes_follow_the_fractions_overall_and_within_each_complexity_level():
    rng = np.random.default_rng(0)
    complexity = rng.integers(1, 8, size=500)
    assignment = assign_splits(complexity, [0.5, 0.1, 0.4], seed=42)
    counts = Counter(assignment.tolist())
    assert (counts[0], counts[1], counts[2]) == (250, 50, 200)
    for level in np.unique(complexity):
        in_level = assignment[complexity == level]
        shares = np.bincount(in_level, minlength=3) / len(in_level)
        assert np.all(np.abs(shares - [0.5, 0.1, 0.4]) <= 2 / len(in_level) + 0.02)


def test_deterministic_for_a_seed_and_different_across_seeds():
    complexity = np.arange(200) % 6 + 1
    assert np.array_equal(assign_splits(complexity, [0.5, 0.1, 0.4], 42), assign_splits(complexity, [0.5, 0.1, 0.4], 42))
    assert not np.array_equal(assign_splits(complexity, [0.5, 0.1, 0.4], 42),
                              assign_splits(complexity, [0.5, 0.1, 0.4], 43))


def test_high_complexities_share_one_stratum():
    complexity = np.array([11, 12, 13, 14, 15, 16, 17, 18, 19, 20])
    counts = np.bincount(assign_splits(complexity, [0.5, 0.1, 0.4], 1), minlength=3)
    assert counts.tolist() == [5, 1, 4]
