import pytest

from pipeline.config import load_config
from pipeline.errors import PresetError
from pipeline.processes import run_config_child


def test_a_childs_pipeline_error_is_raised_here_as_its_one_line(tmp_path):
    """The child's PipelineError crosses as the same kind with the same one-line message."""
    missing = tmp_path / "no-such-preset"
    with pytest.raises(PresetError) as raised:
        run_config_child("pipeline.train.baseline_child", load_config("configs/tiny.yaml"),
                         str(missing), "{}", str(tmp_path / "w.h5"), "0",
                         what="training the baseline")
    assert str(missing) in str(raised.value)
    assert "\n" not in str(raised.value)
