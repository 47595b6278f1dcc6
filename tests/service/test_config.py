"""Model config validation: every error names the file and the field."""

from pathlib import Path

import pytest
import yaml

from onnx_builders import affine_config
from service.core.config import ModelConfig, TaskKind, VersionPolicy, load_model_config
from service.errors import ModelLoadError


def write(tmp_path: Path, data, name: str = "m") -> Path:
    path = tmp_path / name / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_valid_config_loads_with_defaults(tmp_path):
    config = load_model_config(write(tmp_path, affine_config()))
    assert isinstance(config, ModelConfig)
    assert config.max_batch_size == 8
    assert config.dynamic_batching.preferred_batch_sizes == [4, 8]
    assert config.instance_count == 1
    assert config.task.kind is TaskKind.TENSOR
    assert config.version_policy.select([1, 3, 2]) == [3]


@pytest.mark.parametrize(
    "patch, field, fragment",
    [
        ({"max_batch_sise": 4}, "max_batch_sise", "Extra inputs are not permitted"),
        ({"max_batch_size": -1}, "max_batch_size", "greater than or equal to 0"),
        ({"inputs": [{"name": "x", "datatype": "FLOAT32", "shape": [4]}]}, "inputs.0.datatype",
         "FLOAT32"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [0]}]}, "inputs.0",
         "positive or -1"),
        ({"dynamic_batching": {"max_queue_delay_us": -5}}, "dynamic_batching.max_queue_delay_us",
         "greater than or equal to 0"),
        ({"dynamic_batching": {"preferred_batch_sizes": [16]}}, "(top level)",
         "preferred_batch_sizes [16]"),
        ({"task": {"kind": "super_resolution"}}, "task", "needs upscale_factor"),
        ({"task": {"kind": "classifier", "labels": ["a"], "num_classes": 2}}, "task",
         "labels has 1 names but num_classes is 2"),
        ({"version_policy": {"latest": 1, "all": True}}, "version_policy", "exactly one"),
    ],
)
def test_invalid_config_names_file_and_field(tmp_path, patch, field, fragment):
    path = write(tmp_path, {**affine_config(), **patch})
    with pytest.raises(ModelLoadError) as info:
        load_model_config(path)
    message = info.value.message
    assert message.startswith(f"{path}: field '{field}'"), message
    assert fragment in message


def test_missing_required_field_is_named(tmp_path):
    data = affine_config()
    del data["outputs"]
    with pytest.raises(ModelLoadError, match=r"field 'outputs': Field required"):
        load_model_config(write(tmp_path, data))


def test_yaml_syntax_error_names_file(tmp_path):
    path = write(tmp_path, "inputs: [unclosed\n")
    with pytest.raises(ModelLoadError, match=rf"^{path}: not valid YAML"):
        load_model_config(path)


def test_name_must_match_directory(tmp_path):
    path = write(tmp_path, {**affine_config(), "name": "other"}, name="affine")
    with pytest.raises(ModelLoadError, match=r"field 'name': must match the directory name 'affine'"):
        load_model_config(path)


def test_version_policies():
    assert VersionPolicy(all=True).select([2, 1]) == [1, 2]
    assert VersionPolicy(latest=2).select([1, 5, 3]) == [3, 5]
    assert VersionPolicy(specific=[1, 4]).select([1, 2, 3]) == [1]
