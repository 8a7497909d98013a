import time

import numpy as np
import pytest

from pipeline.train import presets
from pipeline.errors import PresetError


def test_round_trip_through_a_local_folder(tiny_preset, tmp_path):
    lm = presets.load_causal_lm(str(tiny_preset))
    out = presets.save_preset(lm, tmp_path / "copy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no temporary left behind
    again = presets.load_causal_lm(str(out))
    text = ["Tomato soup. Serves four, with caf\u00e9 cr\u00e8me \U0001F600."]
    x, _, _ = lm.preprocessor(text)
    np.testing.assert_array_equal(x["token_ids"], again.preprocessor(text)[0]["token_ids"])
    np.testing.assert_allclose(lm(x), again(x), atol=0, rtol=0)  # identical weights
    assert again.backbone.get_config() == lm.backbone.get_config()


def test_unknown_name_lists_known_presets():
    with pytest.raises(PresetError, match=r"unknown preset 'gpt2_tiny_xx'.*gpt2_base_en"):
        presets.resolve_preset("gpt2_tiny_xx")


@pytest.mark.parametrize("name", ["gpt2_base_en", "hf://openai-community/gpt2",
                                  "kaggle://keras/gpt2/keras/gpt2_base_en"])
def test_remote_preset_without_network_fails_fast(monkeypatch, name):
    monkeypatch.setattr(presets, "_can_reach", lambda host, timeout=4.0: False)
    started = time.time()
    with pytest.raises(PresetError, match="cannot be reached.*local preset folder"):
        presets.load_causal_lm(name)
    assert time.time() - started < 5


def test_real_offline_check_is_quick():
    # Whatever the network, the probe answers within its timeout.
    started = time.time()
    presets._can_reach("www.kaggle.com", timeout=2.0)
    assert time.time() - started < 10


def test_folder_without_weights(tiny_preset, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_preset.iterdir():
        if f.name != "model.weights.h5" and f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    with pytest.raises(PresetError, match="no model.weights.h5"):
        presets.load_causal_lm(str(broken))


def test_missing_folder(tmp_path):
    with pytest.raises(PresetError, match="does not exist"):
        presets.load_causal_lm(str(tmp_path / "nowhere"))


def test_keras_nlp_loads_a_preset_this_project_wrote(tiny_preset):
    import keras_hub
    import keras_nlp  # the old name, still imported by codelab-era code

    greedy = []
    for library in (keras_nlp, keras_hub):
        lm = library.models.GPT2CausalLM.from_preset(str(tiny_preset))
        lm.compile(sampler="greedy")
        greedy.append(lm.generate(["Tomato soup.", "Honey oat bread."], max_length=24))
    assert greedy[0] == greedy[1]
    assert all(text.startswith(prompt) for text, prompt in
               zip(greedy[0], ["Tomato soup.", "Honey oat bread."]))
