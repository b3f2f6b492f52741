from pathlib import Path

import pytest

from common.config import Config, load_config
from common.errors import PipelineError


def test_defaults_are_valid():
    config = load_config()
    assert config == Config().validate()
    assert config.dataset == "synthetic"


def test_set_overrides_are_typed():
    config = load_config(overrides=["layers=3,7", "temperature=1", "max_new_tokens=64", "data_file=null"])
    assert config.layers == [3, 7]
    assert config.temperature == 1.0 and isinstance(config.temperature, float)
    assert config.max_new_tokens == 64
    assert config.data_file is None
    assert load_config(overrides=["layers=[4]"]).layers == [4]
    assert load_config(overrides=["layers=4"]).layers == [4]


def test_yaml_file_then_set_wins(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("batch_size: 4\nseed: 7\n")
    config = load_config(str(path), ["seed=9"], data_dir="elsewhere")
    assert (config.batch_size, config.seed, config.data_dir) == (4, 9, "elsewhere")


@pytest.mark.parametrize("override, message", [
    ("no_such_key=1", "unknown config key 'no_such_key'"),
    ("batch_size=many", "wrong type"),
    ("batch_size=2.5", "wrong type"),
    ("batch_size=0", "'batch_size' = 0 is invalid"),
    ("temperature=-1", "'temperature'"),
    ("dataset=imagenet", "'dataset'"),
    ("layers=-1", "'layers'"),
    ("split_fractions=0.5,0.5,0.5", "'split_fractions'"),
    ("data_file=/no/such/file.json", "not a readable file"),
    ("noequals", "key=value"),
])
def test_bad_values_are_rejected_with_the_key_named(override: str, message: str):
    with pytest.raises(PipelineError, match=message):
        load_config(overrides=[override])


def test_bad_yaml_file(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(PipelineError, match="mapping"):
        load_config(str(path))
    with pytest.raises(PipelineError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"))


def test_a_profile_sits_between_the_defaults_and_the_config_file(tmp_path: Path):
    quick = load_config(profile="quick")
    assert quick.n_tasks < Config().n_tasks and quick.data_dir != Config().data_dir  # never the default's outputs
    path = tmp_path / "c.yaml"
    path.write_text("n_tasks: 90\n")
    assert load_config(str(path), profile="quick").n_tasks == 90
    assert load_config(str(path), ["n_tasks=70"], profile="quick").n_tasks == 70
    with pytest.raises(PipelineError, match="unknown profile 'slow'.*quick"):
        load_config(profile="slow")


def test_the_gpu_profile_is_a_valid_config_of_gemma_with_gemmascope_in_its_own_folder():
    gemma = load_config(profile="gemma")  # validated on load: keys exist, types and ranges hold
    assert gemma.model_name == "google/gemma-2-2b" and gemma.sae_source == "gemma-scope-2b-pt-res-canonical"
    assert gemma.dataset == "mbpp" and gemma.data_dir not in (Config().data_dir, load_config(profile="quick").data_dir)
    assert max(gemma.layers) < 26  # Gemma-2-2B's depth: GemmaScope has an SAE at each of them


def test_the_plan_counts_each_phases_work_and_totals_its_time(tmp_path: Path):
    from common.phases import PHASES
    from common.plan import estimate, plan_lines

    config = load_config(data_dir=str(tmp_path), overrides=["n_tasks=100", "temperatures=0.5,1.0",
                                                             "samples_per_temperature=2"])
    by_phase = {e.spec.id: e for e in estimate(config, PHASES)}
    assert by_phase["1"].units == 50 * (1 + config.samples_per_task) and by_phase["3.6"].units == 10
    assert by_phase["3.5"].units == 40 * (1 + 2 * 2)
    assert all(e.seconds > 0 for e in by_phase.values())
    lines = plan_lines(config, PHASES)
    assert len(lines) == len(PHASES) + 2 and lines[-1].strip().startswith("total ~")
