"""manifest.json and MODEL_CARD.md in every export folder, checked against the files."""

import hashlib
import json
import shutil

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from pipeline.config import load_config
from pipeline.export.stage import export_preset
from pipeline.fsutil import write_json

DTYPES = {np.bytes_: "string", np.float32: "float32", np.float16: "float16", np.int32: "int32",
          np.int64: "int64"}


@pytest.fixture(scope="module")
def exported(tiny_preset, tmp_path_factory, kitchen_paragraphs):
    run = tmp_path_factory.mktemp("handoff_run")
    data = run / "notes.txt"
    data.write_text("\n\n".join(kitchen_paragraphs[:40]), encoding="utf-8")
    write_json(run / "metrics.json", {"finetune": {
        "data": {"train": {"examples": 36, "tokens": 5000, "tokens_trained_per_epoch": 5000}},
        "before": {"val_perplexity": 300.0}, "after": {"val_perplexity": 42.5}}})
    cfg = load_config(None, {"model": {"preset": "embedded"}, "data": {"path": str(data)},
                             "export": {"max_length": 32, "prefill_lengths": [16, 32],
                                        "verify": False}})
    shutil.copytree(tiny_preset, run / "finetune" / "preset")  # this run's fine-tuned model
    export_preset(cfg, run, verbose=False)
    return run


@pytest.mark.parametrize("target", ["text", "litertlm"])
def test_manifest_matches_the_files(exported, target):
    folder = exported / "export" / target
    manifest = json.loads((folder / "manifest.json").read_text())
    files = {p.name for p in folder.iterdir() if p.is_file()} - {"manifest.json"}
    assert {f["name"] for f in manifest["files"]} == files and "MODEL_CARD.md" in files
    for entry in manifest["files"]:
        data = (folder / entry["name"]).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    tflites = sorted(p.name for p in folder.glob("*.tflite"))
    assert sorted(manifest["signatures"]) == tflites
    for name in tflites:  # every signature read back by the runtime's own interpreter
        interpreter = Interpreter(model_path=str(folder / name))
        listed = interpreter.get_signature_list()
        assert sorted(manifest["signatures"][name]) == sorted(listed)
        for key, sig in manifest["signatures"][name].items():
            runner = interpreter.get_signature_runner(key)
            for side, details in (("inputs", runner.get_input_details()),
                                  ("outputs", runner.get_output_details())):
                assert [t["name"] for t in sig[side]] == list(listed[key][side])
                for t in sig[side]:
                    assert t["shape"] == details[t["name"]]["shape"].tolist()
                    assert t["dtype"] == DTYPES[details[t["name"]]["dtype"]]
    assert manifest["quantization"] == "int8"
    assert manifest["tokenizer"]["vocabulary_size"] == 400
    assert manifest["tokenizer"]["end_id"] == 399 and manifest["tokenizer"]["pad_id"] == 0
    assert manifest["context"] == (32 if target == "text" else 96)
    assert manifest["versions"]["tensorflow"] and manifest["versions"]["keras-hub"] == "0.32.0"
    assert manifest["model"]["layers"] == 2 and manifest["model"]["parameters"] > 0


def test_model_card_is_written_from_the_run(exported):
    card = (exported / "export" / "text" / "MODEL_CARD.md").read_text()
    assert "2 layers, 32 wide" in card and "int8" in card
    assert "36 training examples, 5000 tokens" in card
    assert "Validation perplexity, after fine-tuning: 42.50" in card
    assert "Limitations and biases" in card and "WebText" in card
    manifest = json.loads((exported / "export" / "text" / "manifest.json").read_text())
    runtime = manifest["minimum_runtime"]  # computed from the file, as the card says
    assert f"delegate {runtime['tflite']} (computed from the file's operator versions)" in card
    assert "tensorflow-lite-select-tf-ops:2.16.1" in card


@pytest.mark.parametrize("target,languages", [("text", ["kotlin", "swift"]),
                                              ("litertlm", ["kotlin", "swift"])])
def test_readme_has_snippets_that_name_the_folder_files(exported, target, languages):
    folder = exported / "export" / target
    readme = (folder / "README.md").read_text()
    model = next(folder.glob("*.litertlm" if target == "litertlm" else "*.tflite")).name
    for language in languages:
        block = readme.split(f"```{language}\n", 1)[1].split("```", 1)[0]
        assert model in block
    assert "not compiled" in readme
    if target == "text":  # the signature's own tensor names
        assert '"prompt"' in readme and '"text"' in readme and "select-tf-ops:2.16.1" in readme
