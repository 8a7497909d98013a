"""A Hugging Face GPT-2 checkpoint folder (safetensors, config.json, vocab.json, merges.txt) as
model.preset, read by keras-hub's own converter: logits against a numpy forward pass of the
same weights; fine-tuning on it; folders that are not checkpoints fail with one line."""

import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from pipeline.config import load_config
from pipeline.errors import PresetError
from pipeline.train import presets

from conftest import ROOT

LAYERS, HIDDEN, HEADS, POSITIONS = 2, 32, 2, 64
# float32 through two blocks: keras-hub and numpy sum in different orders
LOGITS_ATOL = 1e-4


def write_hf_gpt2(folder, tokenizer, seed=0):
    """Writes what `GPT2LMHeadModel.save_pretrained` and the tokenizer's save write (keys
    under `transformer.`, the output projection tied to wte and not stored)."""
    rng = np.random.default_rng(seed)
    vocab = tokenizer.vocabulary_size()

    def w(*shape, around=0.0):
        return (around + 0.05 * rng.standard_normal(shape)).astype("float32")

    t = {"wte.weight": w(vocab, HIDDEN), "wpe.weight": w(POSITIONS, HIDDEN),
         "ln_f.weight": w(HIDDEN, around=1.0), "ln_f.bias": w(HIDDEN)}
    for i in range(LAYERS):
        p = f"h.{i}."
        t |= {p + "ln_1.weight": w(HIDDEN, around=1.0), p + "ln_1.bias": w(HIDDEN),
              p + "attn.c_attn.weight": w(HIDDEN, 3 * HIDDEN), p + "attn.c_attn.bias": w(3 * HIDDEN),
              p + "attn.c_proj.weight": w(HIDDEN, HIDDEN), p + "attn.c_proj.bias": w(HIDDEN),
              p + "ln_2.weight": w(HIDDEN, around=1.0), p + "ln_2.bias": w(HIDDEN),
              p + "mlp.c_fc.weight": w(HIDDEN, 4 * HIDDEN), p + "mlp.c_fc.bias": w(4 * HIDDEN),
              p + "mlp.c_proj.weight": w(4 * HIDDEN, HIDDEN), p + "mlp.c_proj.bias": w(HIDDEN)}
    folder.mkdir(parents=True)
    save_file({"transformer." + k: v for k, v in t.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    end = tokenizer.end_token_id
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": vocab,
        "n_positions": POSITIONS, "n_ctx": POSITIONS, "n_embd": HIDDEN, "n_layer": LAYERS,
        "n_head": HEADS, "activation_function": "gelu_new", "resid_pdrop": 0.0,
        "embd_pdrop": 0.0, "attn_pdrop": 0.0, "layer_norm_epsilon": 1e-5,
        "bos_token_id": end, "eos_token_id": end}))
    (folder / "vocab.json").write_text(json.dumps(tokenizer.vocabulary), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(tokenizer.merges) + "\n",
                                       encoding="utf-8")
    return t


def numpy_logits(t, ids):
    """GPT-2's forward pass written out in numpy: the reference."""
    def norm(x, name):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5) * t[name + ".weight"] + t[name + ".bias"]

    def gelu(x):  # GPT-2's "gelu_new", the tanh approximation
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    n, d = len(ids), HIDDEN // HEADS
    x = t["wte.weight"][ids] + t["wpe.weight"][:n]
    causal = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(LAYERS):
        p = f"h.{i}."
        qkv = norm(x, p + "ln_1") @ t[p + "attn.c_attn.weight"] + t[p + "attn.c_attn.bias"]
        q, k, v = (a.reshape(n, HEADS, d).transpose(1, 0, 2) for a in np.split(qkv, 3, -1))
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(d) + causal
        att = np.exp(scores - scores.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        heads = (att @ v).transpose(1, 0, 2).reshape(n, HIDDEN)
        x = x + heads @ t[p + "attn.c_proj.weight"] + t[p + "attn.c_proj.bias"]
        h = gelu(norm(x, p + "ln_2") @ t[p + "mlp.c_fc.weight"] + t[p + "mlp.c_fc.bias"])
        x = x + h @ t[p + "mlp.c_proj.weight"] + t[p + "mlp.c_proj.bias"]
    return norm(x, "ln_f") @ t["wte.weight"].T


@pytest.fixture(scope="module")
def hf_checkpoint(tiny_preset, tmp_path_factory):
    tokenizer = presets.load_tokenizer(str(tiny_preset))
    folder = tmp_path_factory.mktemp("hf") / "gpt2-tiny-hf"
    return folder, write_hf_gpt2(folder, tokenizer), tokenizer


def test_hf_checkpoint_loads_with_the_reference_logits(hf_checkpoint):
    folder, tensors, tokenizer = hf_checkpoint
    lm = presets.load_causal_lm(str(folder))
    text = "Tomato soup. Serves four."
    ids = np.asarray(tokenizer(text))
    assert np.asarray(lm.preprocessor.tokenizer(text)).tolist() == ids.tolist()  # same ids
    x = {"token_ids": ids[None], "padding_mask": np.ones((1, len(ids)), "int32")}
    np.testing.assert_allclose(np.asarray(lm(x))[0], numpy_logits(tensors, ids),
                               atol=LOGITS_ATOL, rtol=0)


def test_fine_tuning_an_hf_checkpoint_lowers_validation_loss(hf_checkpoint, tmp_path,
                                                             kitchen_lines):
    from pipeline.train.finetune import finetune

    data = tmp_path / "kitchen.txt"
    data.write_text("\n\n".join(kitchen_lines[:40]), encoding="utf-8")
    cfg = load_config(None, {"model": {"preset": str(hf_checkpoint[0])},
                             "data": {"path": str(data)},
                             "finetune": {"sequence_length": 48, "batch_size": 8,
                                          "epochs": 2, "learning_rate": 3e-3},
                             "eval": {"max_length": 20, "prompts": ["Tomato soup."]}})
    m = finetune(cfg, tmp_path / "run", verbose=False).metrics
    assert m["after"]["val_perplexity"] < m["before"]["val_perplexity"]


@pytest.mark.parametrize("remove, says", [
    ("model.safetensors", "has no model.safetensors: the weights are missing"),
    ("merges.txt", "has no merges.txt: the tokenizer files are missing"),
    ("config.json", "has no config.json: it is neither a keras-hub preset nor a Hugging Face"),
])
def test_incomplete_hf_folders_are_one_line(hf_checkpoint, tmp_path, remove, says):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(hf_checkpoint[0], folder)
    (folder / remove).unlink()
    if remove == "model.safetensors":
        (folder / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(PresetError, match=says) as err:
        presets.load_causal_lm(str(folder))
    assert "\n" not in str(err.value)
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "configs/tiny.yaml", "--set",
                           f"model.preset={folder}", "--set",
                           f"output_dir={tmp_path / 'runs'}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]  # (TensorFlow's start-up log lines before it)
    assert last.startswith("error: ") and says in last, proc.stderr[-2000:]
    assert not (tmp_path / "runs").exists()


def test_another_architecture_is_named(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(PresetError, match="Hugging Face 'llama' checkpoint; this project trains"):
        presets.resolve_preset(str(tmp_path / "llama"))


@pytest.mark.slow  # the whole chain under papermill on the HF checkpoint
def test_a_run_completes_on_an_hf_checkpoint(hf_checkpoint, tmp_path, kitchen_lines):
    data = tmp_path / "notes.txt"
    data.write_text("\n\n".join(kitchen_lines[:40]), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "configs/tiny.yaml",
                           "--set", f"model.preset={hf_checkpoint[0]}", "--set",
                           f"data.path={data}", "--set", f"output_dir={tmp_path / 'runs'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "tiny" / "metrics.json").read_text())
    assert metrics["finetune"]["after"]["val_perplexity"] < \
        metrics["finetune"]["before"]["val_perplexity"]
    text = metrics["export"]["teacher"]["text"]["verification"]
    assert text["matches"] >= text["prompts"] - 1
    assert metrics["export"]["student"]["litertlm"]["verification"]["tokenizer_identical"]
