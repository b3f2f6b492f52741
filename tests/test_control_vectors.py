"""Residual directions exported as llama.cpp control vectors and read back with the gguf library."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from common.control_vectors import read_control_vector, save_control_vector
from common.directions import SteeringDirection
from common.errors import PipelineError
from common.interventions import ResidualAddition


def _addition(layer: int, seed: int, alpha: float, positions: str = "all") -> ResidualAddition:
    vector = torch.randn(16, generator=torch.Generator().manual_seed(seed))
    return ResidualAddition(SteeringDirection(f"d{seed}", layer, vector, "random"), alpha, positions)


def test_a_control_vector_holds_alpha_times_each_unit_direction_at_its_layer(tmp_path):
    additions = [_addition(3, 0, 4.0), _addition(7, 1, -2.5), _addition(7, 2, 1.0)]
    path = save_control_vector(tmp_path / "steer.gguf", additions, "llama")
    hint, vectors = read_control_vector(path)
    assert hint == "llama" and sorted(vectors) == [3, 7]
    assert np.allclose(vectors[3], additions[0].added.numpy(), atol=1e-6)
    assert np.allclose(vectors[7], (additions[1].added + additions[2].added).numpy(), atol=1e-6)  # summed
    assert np.linalg.norm(vectors[3]) == pytest.approx(4.0, rel=1e-5)
    reader = GGUFReader(str(path))
    architecture = reader.fields["general.architecture"]
    assert bytes(architecture.parts[architecture.data[0]]).decode() == "controlvector"
    count = reader.fields["controlvector.layer_count"]
    assert int(count.parts[count.data[0]][0]) == 2
    assert {t.name for t in reader.tensors} == {"direction.3", "direction.7"}


@pytest.mark.parametrize("addition, message", [
    (_addition(0, 0, 1.0), "start at layer 1"),
    (_addition(2, 0, 1.0, positions="last_prompt"), "every token"),
])
def test_what_llama_cpp_cannot_apply_is_refused_and_nothing_is_written(tmp_path, addition, message):
    with pytest.raises(PipelineError, match=message):
        save_control_vector(tmp_path / "steer.gguf", [addition], "llama")
    assert not (tmp_path / "steer.gguf").exists()
