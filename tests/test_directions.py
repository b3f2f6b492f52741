import numpy as np
import pytest
import torch

from common.directions import SteeringDirection, load_directions, save_directions
from phase2_6.runner import mean_difference, paired_differences, paired_pca


def _planted(n_tasks: int = 40, samples: int = 4, d_model: int = 32, seed: int = 0):
    """Every passing row sits `strength` further along a hidden direction than a failing row of its task."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(d_model, generator=generator)
    direction /= direction.norm()
    rows, passed, tasks = [], [], []
    for task in range(n_tasks):
        base = torch.randn(d_model, generator=generator) * 3
        strength = 1.0 + 2.0 * torch.rand(1, generator=generator).item()  # varies across tasks
        for sample in range(samples):
            good = sample % 2 == 0
            noise = torch.randn(d_model, generator=generator) * 0.1
            rows.append(base + noise + (strength * direction if good else 0))
            passed.append(good)
            tasks.append(f"t{task}")
    return torch.stack(rows), np.array(passed), np.array(tasks), direction


def test_mean_difference_finds_the_planted_direction():
    activations, passed, _, direction = _planted()
    vector, raw_norm = mean_difference(activations, passed)
    assert float(vector.norm()) == pytest.approx(1.0)
    assert float(vector @ direction) > 0.9 and raw_norm > 1.0


def test_paired_pca_finds_it_with_the_right_sign():
    activations, passed, tasks, direction = _planted()
    differences = paired_differences(activations, passed, tasks)
    assert differences.shape == (40, 32)
    vector, explained = paired_pca(differences)
    assert float(vector @ direction) > 0.95 and explained > 0.5


def test_a_shuffled_label_gives_no_real_direction():
    activations, passed, _, direction = _planted()
    shuffled = np.random.default_rng(1).permutation(passed)
    vector, _ = mean_difference(activations, shuffled)
    assert abs(float(vector @ direction)) < 0.5


def test_empty_class_and_missing_pairs_give_nothing():
    activations, passed, tasks, _ = _planted()
    assert mean_difference(activations, np.ones_like(passed)) is None
    only_one_class_per_task = np.array([t in {f"t{i}" for i in range(0, 40, 2)} for t in tasks])
    assert len(paired_differences(activations, only_one_class_per_task, tasks)) == 0
    assert paired_pca(torch.empty(0, 32)) is None


def test_save_and_load_round_trip(tmp_path):
    directions = [SteeringDirection("mean_difference/layer_3", 3, torch.arange(4.0), "mean_difference", {"n": 5}),
                  SteeringDirection("paired_pca/layer_3", 3, -torch.ones(4), "paired_pca", {"pairs": 2})]
    save_directions(tmp_path / "d.safetensors", directions)
    loaded = load_directions(tmp_path / "d.safetensors")
    assert ([(d.name, d.layer, d.source, d.provenance) for d in loaded] ==
        [(d.name, d.layer, d.source, d.provenance) for d in directions])
    assert all(torch.equal(a.vector, b.vector) for a, b in zip(loaded, directions))
    save_directions(tmp_path / "empty.safetensors", [])
    assert load_directions(tmp_path / "empty.safetensors") == []
    with pytest.raises(ValueError, match="repeat"):
        save_directions(tmp_path / "x.safetensors", directions + directions[:1])


def test_unit_rejects_the_zero_vector():
    assert float(SteeringDirection("a", 0, torch.tensor([3.0, 4.0]), "random").unit().vector.norm()) == pytest.approx(1)
    with pytest.raises(ValueError, match="zero vector"):
        SteeringDirection("z", 0, torch.zeros(3), "random").unit()
