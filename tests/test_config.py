import subprocess
import sys

import pytest

from pipeline.__main__ import parse_sets
from pipeline.config import RunConfig, dump_yaml, load_config
from pipeline.errors import ConfigError

from conftest import ROOT


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path):
    path = write(tmp_path, "name: x\nfinetune:\n  epochs: 2\n  learning_rate: 1\n")
    cfg = load_config(path, {"eval": {"prompts": ["a", "b"]}})
    assert cfg.name == "x"
    assert cfg.finetune.epochs == 2
    assert cfg.finetune.learning_rate == 1.0 and isinstance(cfg.finetune.learning_rate, float)
    assert cfg.eval.prompts == ("a", "b")
    assert cfg.finetune.batch_size == RunConfig().finetune.batch_size  # untouched default


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    # PyYAML (YAML 1.1) reads "6e-3" as a string; in a config and in --set it means 0.006.
    cfg = load_config(write(tmp_path, "finetune:\n  learning_rate: 6e-3\n"),
                      parse_sets(["distill.learning_rate=1E-4"]))
    assert cfg.finetune.learning_rate == 0.006
    assert cfg.distill.learning_rate == 0.0001
    with pytest.raises(ConfigError, match="expected a number, got '6e'"):
        load_config(None, {"finetune": {"learning_rate": "6e"}})


def test_empty_file_is_all_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == RunConfig()


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, {"finetune": {"lora_rank": 4}})
    assert load_config(write(tmp_path, dump_yaml(cfg))) == cfg


@pytest.mark.parametrize("text, names", [
    ("epochs: 3\n", ["c.yaml", "epochs", "unknown key"]),
    ("finetune:\n  epoch: 3\n", ["c.yaml", "finetune.epoch", "unknown key", "epochs"]),
    ("finetune:\n  epochs: three\n", ["c.yaml", "finetune.epochs", "integer", "three"]),
    ("finetune:\n  epochs: 2.5\n", ["finetune.epochs", "integer"]),
    ("finetune:\n  keep_checkpoints: 1\n", ["finetune.keep_checkpoints", "true or false"]),
    ("finetune:\n  batch_size: true\n", ["finetune.batch_size", "integer"]),
    ("eval:\n  prompts: hello\n", ["eval.prompts", "list"]),
    ("eval:\n  prompts: [1, 2]\n", ["eval.prompts[0]", "string"]),
    ("finetune: 3\n", ["finetune", "mapping"]),
    ("name: [a\n", ["c.yaml", "not valid YAML", "line"]),
    ("- a\n- b\n", ["c.yaml", "mapping"]),
    ("data:\n  validation_fraction: 1.5\n", ["data.validation_fraction", "1.5"]),
    ("data:\n  format: xml\n", ["data.format", "xml"]),
])
def test_bad_configs_name_file_and_key(tmp_path, text, names):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    message = str(err.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_set_flags_parse_yaml_scalars():
    assert parse_sets(["finetune.epochs=2", "name=x", "finetune.keep_checkpoints=true"]) == {
        "finetune": {"epochs": 2, "keep_checkpoints": True}, "name": "x"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_sets(["finetune.epochs"])


def test_cli_bad_config_is_one_line_and_leaves_nothing(tmp_path):
    bad = write(tmp_path, f"name: bad\noutput_dir: {tmp_path}/runs\nfinetune:\n  epochs: x\n")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(bad)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "finetune.epochs" in lines[-1]
    assert not (tmp_path / "runs").exists()
