"""`python -m pipeline generate`: LiteRT-LM streaming from a bundle or a run folder."""

import re
import subprocess
import sys

import pytest

from conftest import ROOT


def generate(bundle, *args):
    return subprocess.run([sys.executable, "-m", "pipeline", "generate", str(bundle), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_generate_streams_text(int8_bundle):
    proc = generate(int8_bundle.path, "Tomato soup.", "--max-new-tokens", "8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("Tomato soup.") and len(proc.stdout.rstrip("\n")) > len("Tomato soup.")
    run_dir = int8_bundle.path.parent.parent.parent  # a run folder works too
    proc = generate(run_dir, "Bread", "--sampler", "top_k", "--top-k", "5", "--seed", "1",
                    "--max-new-tokens", "4")
    assert proc.returncode == 0 and proc.stdout.startswith("Bread")


@pytest.mark.parametrize("args, message", [
    (["x " * 200], r"error: the prompt has \d+ tokens but the model's context is 96: shorten"),
    (["   "], "error: the prompt is empty"),
])
def test_generate_bad_prompts(int8_bundle, args, message):
    proc = generate(int8_bundle.path, *args)
    assert proc.returncode == 2
    assert re.match(message, proc.stderr.strip().splitlines()[-1])


def test_a_bundle_copied_without_its_tokenizer(int8_bundle, tmp_path):
    bare = tmp_path / "gpt2_int8.litertlm"  # the bundle alone: no tokenizer.json beside it
    bare.write_bytes(int8_bundle.path.read_bytes())
    proc = generate(bare, "Tomato soup.", "--max-new-tokens", "4")
    assert proc.returncode == 0 and proc.stdout.startswith("Tomato soup."), proc.stderr[-2000:]
    proc = generate(bare, "x " * 200)  # too long: the runtime itself refuses it, in one line
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    # one error line (the runtime may log its own line as it shuts down, after ours)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: the runtime refused the prompt")


def test_generate_unknown_bundle(tmp_path):
    proc = generate(tmp_path / "nope.litertlm", "hi")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'nope.litertlm'} does not exist: give a .litertlm file or a run folder")


def test_the_packed_weight_cache_is_sealed_and_a_damaged_one_rebuilt(int8_bundle, tmp_path,
                                                                      monkeypatch, capsys):
    import pipeline.runtime.litertlm as litertlm

    monkeypatch.setenv("GPT2_PIPELINE_CACHE", str(tmp_path))
    first = "".join(litertlm.stream_generate(int8_bundle.path, "Tomato soup.", 8))
    (entry,) = (tmp_path / "litertlm").iterdir()
    cached = [p for p in entry.iterdir() if p.name != litertlm.CACHE_SEAL]
    assert cached and (entry / litertlm.CACHE_SEAL).is_file()  # the runtime wrote, we sealed
    "".join(litertlm.stream_generate(int8_bundle.path, "Tomato soup.", 8))
    assert "damaged" not in capsys.readouterr().out  # a sound cache is reused as it is
    biggest = max(cached, key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])  # a cut-off write
    again = "".join(litertlm.stream_generate(int8_bundle.path, "Tomato soup.", 8))
    assert f"LiteRT-LM cache {entry} is damaged ({biggest.name} has" in capsys.readouterr().out
    assert again == first and litertlm.sealed_problem(entry, litertlm.CACHE_SEAL) is None


def test_the_runtime_package_loads_without_tensorflow_or_keras():
    """An app-side process (generate, verification children) pays for the runtimes only; the
    Flex runner is left out: TensorFlow 2.16's interpreter is its runtime, in .venv-flex."""
    code = ("import sys, pipeline.runtime.flex, pipeline.runtime.interpreter, "
            "pipeline.runtime.litertlm, pipeline.metrics; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'keras_hub') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
