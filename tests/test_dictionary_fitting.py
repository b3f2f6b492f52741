"""Phase 3.9's fitting: task vectors from the right programs, k-means over directions, and a projection that beats
the constant guess only when the prompt says something about the task's vector."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from phase3_9.fitting import ProjectionTraining, cluster_means, task_vectors, train_projection

SETTINGS = ProjectionTraining((0.01, 0.001, 0.0001), 0.0001, 16, 200, 0)


def test_task_vectors_prefer_the_models_own_passing_programs_to_the_reference():
    table = pd.DataFrame({"task_id": ["a", "a", "a", "b", "b", "c", "d", "d"],
                          "test_passed": [True, False, False, False, False, True, False, False]})
    code = torch.arange(8, dtype=torch.float32)[:, None].repeat(1, 2)
    code[7] = float("nan")  # d's second program has no code: it is left out of the failing mean
    references = {"b": torch.full((2,), 10.0), "d": torch.full((2,), 20.0)}
    tasks, vectors, counts = task_vectors(table, code, references)
    assert tasks == ["a", "b", "d"]  # c has no failing program
    assert torch.equal(vectors, torch.tensor([[0 - 1.5] * 2, [10 - 3.5] * 2, [20 - 6.0] * 2]))
    assert counts == {"own_passing": 1, "reference": 2, "no_failing_program": 1, "no_passing_side": 0}


def test_k_means_over_directions_finds_planted_clusters_whatever_the_vectors_sizes():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 16) * 5
    vectors = np.concatenate([centres[i] + rng.normal(0, 0.5, (20, 16)) for i in range(3)])
    vectors *= rng.uniform(0.1, 10, (60, 1))  # sizes vary a hundredfold; directions carry the clusters
    units = torch.nn.functional.normalize(torch.tensor(vectors, dtype=torch.float32), dim=-1)
    means, labels = cluster_means(units, 3, seed=0)
    assert sorted(np.bincount(labels).tolist()) == [20, 20, 20]
    assert torch.allclose(means.norm(dim=-1), torch.ones(3))
    assert sorted(int(means[:, i].argmax()) for i in range(3)) == [0, 1, 2]


def _planted(n_tasks: int, informative: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Last-prompt activations and unit task vectors: linked by a fixed linear map, or independent."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n_tasks, 24, generator=generator) * 3 + 1
    mixing = torch.randn(24, 24, generator=generator)
    targets = hidden @ mixing if informative else torch.randn(n_tasks, 24, generator=generator)
    return hidden, torch.nn.functional.normalize(targets + 2.0, dim=-1), [f"t{i}" for i in range(n_tasks)]


def test_the_projection_beats_the_constant_guess_and_its_shuffled_null_when_the_prompt_predicts_the_vector():
    hidden, targets, tasks = _planted(300, informative=True)
    projection, trial, held_out = train_projection(hidden, targets, tasks, SETTINGS)
    record = projection.record
    assert record["epochs"] > 0 and held_out.sum() == record["held_out_tasks"] == 60
    gain = record["held_out_mean_cosine"] - record["held_out_mean_cosine_of_constant"]
    assert gain > 0.1 and gain > record["shuffled_targets_gain_over_constant"] + 0.1
    # the held-out P never saw the held-out tasks, not even through the standardisation
    assert torch.allclose(trial.input_mean, hidden[torch.from_numpy(~held_out)].mean(0), atol=1e-5)
    assert torch.allclose(projection.input_mean, hidden.mean(0), atol=1e-5)


def test_the_projection_gains_no_more_than_its_shuffled_null_when_the_prompt_says_nothing():
    record = train_projection(*_planted(300, informative=False), SETTINGS)[0].record
    gain = record["held_out_mean_cosine"] - record["held_out_mean_cosine_of_constant"]
    assert gain < 0.03 and abs(gain - record["shuffled_targets_gain_over_constant"]) < 0.03
