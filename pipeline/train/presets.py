"""Loading and saving GPT-2 models as keras-hub presets.

A preset is one of:
  - "embedded": the small GPT-2 this project builds offline (see `pipeline.train.embedded_base`);
  - a keras-hub preset name such as "gpt2_base_en" (downloaded from Kaggle);
  - an "hf://org/name" or "kaggle://owner/model/keras/variant" handle;
  - a local preset folder (what `save_preset` writes);
  - a local Hugging Face GPT-2 checkpoint folder (`config.json` with `model_type: gpt2`,
    `model.safetensors` or a sharded index, `vocab.json`, `merges.txt`: what
    `save_pretrained` writes), read by keras-hub's own converter.

Example:
    >>> lm = load_causal_lm("embedded")
    >>> lm.generate("Tomato soup.", max_length=32)
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from pipeline.config import dump_yaml
from pipeline.errors import PresetError
from pipeline.fsutil import atomic_dir

# keras-hub (and TensorFlow under it) is imported by the functions that load or save a model,
# not at import: `pipeline run` checks presets in a process that runs notebooks and holds no model.
WEIGHTS_FILE = "model.weights.h5"  # a keras-hub preset's weights
REMOTE_HOSTS = {"hf://": "huggingface.co", "kaggle://": "www.kaggle.com"}


def _can_reach(host: str, timeout: float = 4.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _known_names() -> list[str]:
    import keras_hub

    return sorted(keras_hub.models.GPT2Backbone.presets)


HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
HF_TOKENIZER = ("vocab.json", "merges.txt")


def check_local_preset(folder: Path) -> Path:
    """Returns `folder` if it holds a keras-hub preset with weights or a Hugging Face GPT-2
    checkpoint keras-hub can convert, else raises PresetError naming what is missing."""
    if not folder.is_dir():
        raise PresetError(f"preset folder {folder} does not exist")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise PresetError(f"preset folder {folder} has no config.json: it is neither a keras-hub "
                          f"preset nor a Hugging Face checkpoint")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PresetError(f"{config_file}: not valid JSON ({_cause(e)})") from None
    if isinstance(config, dict) and "model_type" in config and "registered_name" not in config:
        return _check_hf_checkpoint(folder, config)
    if not (folder / WEIGHTS_FILE).is_file():
        raise PresetError(f"preset folder {folder} has no {WEIGHTS_FILE}: the weights are missing")
    return folder


def _check_hf_checkpoint(folder: Path, config: dict) -> Path:
    if config["model_type"] != "gpt2":
        raise PresetError(f"{folder} is a Hugging Face {config['model_type']!r} checkpoint; "
                          f"this project trains GPT-2 (model_type 'gpt2')")
    if not any((folder / name).is_file() for name in HF_WEIGHTS):
        torch_only = [p.name for p in folder.glob("pytorch_model*.bin")]
        hint = (f" (it has {torch_only[0]}: save it again with save_pretrained(..., "
                f"safe_serialization=True))" if torch_only else "")
        raise PresetError(f"Hugging Face checkpoint {folder} has no model.safetensors: the "
                          f"weights are missing{hint}")
    missing = [name for name in HF_TOKENIZER if not (folder / name).is_file()]
    if missing:
        raise PresetError(f"Hugging Face checkpoint {folder} has no {' or '.join(missing)}: the "
                          f"tokenizer files are missing (save the tokenizer beside the model)")
    return folder


def resolve_preset(preset: str) -> str:
    """Returns what keras-hub's `from_preset` should receive for `preset`, or raises PresetError.

    Remote presets are checked for network access first, so that an offline machine fails
    in seconds with a message instead of retrying downloads.
    """
    if not isinstance(preset, str) or not preset.strip():
        raise PresetError("preset is empty: use 'embedded', a keras-hub name, a handle or a folder")
    if preset == "embedded":
        from pipeline.train.embedded_base import embedded_preset  # loads TensorFlow: only here

        return str(embedded_preset())
    for scheme, host in REMOTE_HOSTS.items():
        if preset.startswith(scheme):
            return _remote(preset, host)
    path = Path(preset).expanduser()
    if path.exists() or os.sep in preset or preset.startswith("."):
        return str(check_local_preset(path))
    if preset in _known_names():
        return _remote(preset, REMOTE_HOSTS["kaggle://"])
    raise PresetError(
        f"unknown preset {preset!r}: not a local folder, not an hf:// or kaggle:// handle, and "
        f"not a keras-hub GPT-2 preset ({', '.join(_known_names())}); or use 'embedded'"
    )


def _remote(preset: str, host: str) -> str:
    if not _can_reach(host):
        raise PresetError(
            f"preset {preset!r} must be downloaded from {host}, which cannot be reached "
            f"(no network?): use a local preset folder or 'embedded' instead"
        )
    return preset


def load_causal_lm(preset: str, dtype: str | None = None):
    """Returns a `keras_hub.models.GPT2CausalLM` (backbone, tokenizer, preprocessor) from `preset`;
    `dtype` (a dtype policy name such as "mixed_float16") applies to this model only."""
    import keras_hub

    source = resolve_preset(preset)
    try:
        return keras_hub.models.GPT2CausalLM.from_preset(source, dtype=dtype)
    except PresetError:
        raise
    except Exception as e:  # keras-hub raises many kinds; name the preset and the cause
        raise PresetError(f"cannot load preset {preset!r}: {_cause(e)}") from e


def load_tokenizer(preset: str):
    """Returns only the tokenizer of `preset` (no weights loaded): enough to read the data."""
    import keras_hub

    source = resolve_preset(preset)
    try:
        return keras_hub.models.GPT2Tokenizer.from_preset(source)
    except Exception as e:  # as in load_causal_lm
        raise PresetError(f"cannot load the tokenizer of preset {preset!r}: {_cause(e)}") from e


def _cause(error: Exception) -> str:
    """The first line of an exception's message, else its type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def save_preset(causal_lm, folder, cfg=None) -> Path:
    """Saves backbone, tokenizer, preprocessor and task to `folder`, replacing it atomically;
    with `cfg`, the run's resolved config goes beside them as run_config.yaml."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        causal_lm.save_to_preset(str(tmp))
        if cfg is not None:
            (tmp / "run_config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    return folder
