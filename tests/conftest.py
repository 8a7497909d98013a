"""Shared fixtures: a tiny GPT-2 preset built by the project itself, and small corpora."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["PIPELINE_BATCH"] = "1"
# The token cache (and any embedded base) of the tests' own, never the project's .cache/.
os.environ["GPT2_PIPELINE_CACHE"] = tempfile.mkdtemp(prefix="gpt2-pipeline-test-cache-")

KITCHEN = ROOT / "configs" / "data" / "kitchen_notes.txt"



@pytest.fixture(scope="session")
def tiny_spec():
    from pipeline.train.embedded_base import BaseSpec

    # 2 layers, 32 wide, a 400-token vocabulary: builds in seconds, still a real GPT2Backbone.
    return BaseSpec(vocabulary_size=400, num_layers=2, num_heads=2, hidden_dim=32,
                    intermediate_dim=64, max_sequence_length=96, sequence_length=32,
                    batch_size=8, steps=30, learning_rate=3e-3, seed=0)


@pytest.fixture(scope="session")
def tiny_preset(tmp_path_factory, tiny_spec):
    """A keras-hub preset folder of a tiny GPT-2 pre-trained for a few steps on Python's docs."""
    from pipeline.train.embedded_base import build_base, python_text

    folder = tmp_path_factory.mktemp("presets") / "tiny"
    build_base(folder, python_text(150_000), tiny_spec, verbose=False)
    return folder


@pytest.fixture(scope="session")
def kitchen_paragraphs():
    text = KITCHEN.read_text(encoding="utf-8")
    return [p for p in text.split("\n\n") if p.strip()]


@pytest.fixture
def kitchen_lines(kitchen_paragraphs):
    return list(kitchen_paragraphs)


@pytest.fixture(scope="session")
def int8_bundle(tiny_preset, tmp_path_factory):
    """The tiny preset exported as an int8 .litertlm bundle (verified), in a run folder."""
    from pipeline.config import load_config
    from pipeline.export.litertlm import export_litertlm
    
    cfg = load_config(None, {"export": {"prefill_lengths": [16, 32], "quantization": "int8"},
                             "finetune": {"sequence_length": 64}})
    out = tmp_path_factory.mktemp("run_int8") / "export" / "litertlm"
    return export_litertlm(cfg, str(tiny_preset), out, verbose=False)
