import pytest

from pipeline.errors import PipelineError
from pipeline.export.children import convert_in_child


def test_a_failed_conversion_is_one_line_naming_the_converter(tmp_path):
    # not a SavedModel: the child fails, the export gets one line, not the child's traceback
    with pytest.raises(PipelineError, match=r"^the TFLite converter failed: .+") as failure:
        convert_in_child(tmp_path, select_tf_ops=False)
    assert "\n" not in str(failure.value)
