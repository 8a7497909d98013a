"""Every bad input is one line naming the problem (exit 2 from the command line), and valid
files that used to be refused or misread are read correctly."""

import json
import subprocess
import sys

import pytest

from pipeline.__main__ import parse_sets
from pipeline.config import DataConfig, load_config
from pipeline.errors import ConfigError, DataError, PipelineError
from pipeline.train.data import file_examples

from conftest import ROOT


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return last


@pytest.mark.parametrize("sets, says", [
    (["finetune.epochs=[1"], "the value is not valid YAML"),
    (["finetune=1", "finetune.epochs=2"], "an earlier --set gave finetune a value"),
    (["finetune.epochs=2", "finetune=1"], "an earlier --set gave settings inside finetune"),
])
def test_set_flags_that_cannot_be_settings(sets, says):
    with pytest.raises(ConfigError, match=says) as err:
        parse_sets(sets)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, says", [
    ({"eval": {"batch_size": 0}}, "eval.batch_size: 0 must be >= 1"),
    ({"finetune": {"seed": -1}}, "finetune.seed: -1 must be in"),
    ({"finetune": {"learning_rate": float("inf")}}, "finetune.learning_rate: inf must be a finite"),
    ({"distill": {"alpha": float("nan")}}, "distill.alpha: nan must be in [0, 1]"),
    ({"finetune": {"weight_decay": float("nan")}}, "finetune.weight_decay: nan must be a finite"),
    ({"export": {"targets": []}}, "export.targets: [] names no target"),
    ({"eval": {"prompts": []}}, "eval.prompts: [] must be one or more"),
    ({"export": {"prompts": ["  "]}}, "export.prompts"),
])
def test_impossible_values_are_one_line(overrides, says):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_cli_set_error_exits_2_and_writes_nothing(tmp_path):
    last = one_error_line(cli("run", "configs/tiny.yaml", "--set", "finetune.epochs=[1",
                              "--set", f"output_dir={tmp_path / 'runs'}"))
    assert "--set 'finetune.epochs=[1'" in last
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, says", [
    (["--top-p", "1.5"], "--top-p: 1.5 must be in (0, 1]"),
    (["--top-k", "0"], "--top-k: 0 must be >= 1"),
    (["--threads", "0"], "--threads: 0 must be >= 1"),
    (["--temperature", "nan"], "--temperature: nan must be a number > 0"),
])
def test_generate_flags(tmp_path, args, says):
    assert says in one_error_line(cli("generate", str(tmp_path), "Soup.", *args))


@pytest.mark.parametrize("content, says", [
    (b"", "no LITERTLM header"),
    (b"LITERTLM" + b"\0" * 16 + (10 ** 9).to_bytes(8, "little") + b"\0" * 64,
     "its header ends at byte 1000000000"),
])
def test_a_truncated_or_foreign_bundle_is_one_line_not_an_abort(tmp_path, content, says):
    bundle = tmp_path / "gpt2_int8.litertlm"
    bundle.write_bytes(content)
    last = one_error_line(cli("generate", str(bundle), "Soup."))
    assert f"{bundle} is not a complete .litertlm bundle ({says}" in last


def test_data_that_is_not_a_file(tmp_path):
    with pytest.raises(DataError, match="not a regular file"):
        file_examples(__import__("pathlib").Path("/dev/zero"), DataConfig(format="txt"))


@pytest.mark.parametrize("line, says", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"text": "a", "n": ' + "9" * 5000 + "}", "not valid JSON"),
])
def test_jsonl_that_python_cannot_parse_is_one_line(tmp_path, line, says):
    path = tmp_path / "d.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=says) as err:
        file_examples(path, DataConfig())
    assert str(err.value).startswith(f"{path}:1: ") and "\n" not in str(err.value)


def test_valid_jsonl_with_line_separators_inside_strings(tmp_path):
    path = tmp_path / "d.jsonl"
    texts = ["one\u2028line", "para\u2029graph", "carriage\rreturn"]
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts),
                    encoding="utf-8")
    assert file_examples(path, DataConfig()) == texts


def test_csv_with_cr_only_line_endings_and_long_cells(tmp_path):
    path = tmp_path / "d.csv"
    long_cell = "x" * 200_000  # above the csv module's default 128 KiB field limit
    path.write_bytes(f"text,n\rsoup,1\rbread,2\r{long_cell},3\r".encode())
    assert file_examples(path, DataConfig()) == ["soup", "bread", long_cell]


def test_a_huge_data_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.txt"
    with open(path, "wb") as f:  # sparse: 5 GiB on paper, nothing on disk
        f.truncate(5 << 30)
    with pytest.raises(DataError, match=r"5\.0 GiB in one file; split it into files"):
        file_examples(path, DataConfig())


@pytest.mark.parametrize("made_by", ["run", "sweep", "stage"])
def test_direct_stage_commands_never_edit_a_finished_folder(tmp_path, made_by):
    folder = tmp_path / "done"
    folder.mkdir()
    metrics = {"run": {"finetune": {}, "stage_seconds": {}}, "sweep": {},
               "stage": {"finetune": {"steps": 1}}}[made_by]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if made_by == "sweep":
        (folder / "points").mkdir()
    before = sorted(p.name for p in folder.iterdir())
    last = one_error_line(cli("finetune", "configs/tiny.yaml", "--run-dir", str(folder)))
    assert last.startswith(f"error: {folder} is a ") and "give --run-dir a new folder" in last
    assert sorted(p.name for p in folder.iterdir()) == before
