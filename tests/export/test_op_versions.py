"""Operator versions and the minimum runtime, computed by TFLite's own versioning code; the
per-row scales moved into the graph so that quantized text models stay within TFLite 2.16."""

import tempfile

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from pipeline.errors import PipelineError
from pipeline.export import op_versions, tflite
from pipeline.export.row_scales import scales_in_graph

RNG = np.random.default_rng(0)
# rows of very different size, so that one scale per tensor would lose the small rows
TABLE = (RNG.normal(size=(50, 16)) * np.linspace(0.05, 3.0, 50)[:, None]).astype("float32")
WEIGHT = RNG.normal(size=(16, 24)).astype("float32")
BIAS = RNG.normal(size=(24,)).astype("float32")


class Tied(tf.Module):
    """A lookup, a dense layer with bias, and logits over the looked-up (tied) table."""

    @tf.function(input_signature=[tf.TensorSpec([3], tf.int32, name="ids")])
    def serve(self, ids):
        x = tf.gather(TABLE, ids)  # (3, 16)
        return {"h": tf.matmul(x, WEIGHT) + BIAS, "logits": tf.matmul(x, TABLE, transpose_b=True)}


@pytest.fixture(scope="module")
def per_row_int8():
    """The model as ai-edge-quantizer writes it: int8 weights with one scale per row."""
    module = Tied()
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
        model = tflite.read_model(tflite.convert_saved_model(tmp, select_tf_ops=False))
    assert tflite.tie_embedding(model) == 1
    return tflite.quantize(model, "int8")


def run(flatbuffer):
    runner = Interpreter(model_content=flatbuffer).get_signature_runner("serving_default")
    return runner(ids=np.array([1, 7, 49], np.int32))


def test_per_row_int8_needs_tflite_2_18_and_the_export_would_say_which_operator(per_row_int8):
    computed = op_versions.with_computed_versions(per_row_int8)
    facts = op_versions.runtime_facts(computed, "text")
    assert facts["tflite"] == "2.18.0" == facts["declared_in_file"]  # not the converter's 2.x
    assert facts["operators"]["EMBEDDING_LOOKUP v4"] == "2.18.0"
    assert facts["operators"]["FULLY_CONNECTED v12"] == "2.17.0"  # per-channel hybrid
    with pytest.raises(PipelineError, match=r"needs TFLite 2\.18\.0, newer than the runtime "
                                            r"it must run on \(2\.16\.1\): EMBEDDING_LOOKUP v4 "
                                            r"needs TFLite 2\.18\.0, FULLY_CONNECTED v12"):
        op_versions.require_runtime(facts, "2.16.1", "the int8 text model")


def test_scales_in_graph_give_the_same_outputs_within_2_16(per_row_int8):
    model = tflite.read_model(per_row_int8)
    assert scales_in_graph(model) == 3  # lookup, dense layer, tied logits
    rewritten = op_versions.with_computed_versions(tflite.write_model(model))
    facts = op_versions.runtime_facts(rewritten, "text")
    assert op_versions.needing_newer(facts, "2.16.1") == {}
    assert facts["declared_in_file"] == facts["tflite"]
    before, after = run(per_row_int8), run(rewritten)
    for name in ("h", "logits"):
        # the same int8 values and scales, multiplied after the sum instead of inside it:
        # float32 rounding only
        np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-5)
    # and the per-row scales matter: one scale per tensor would be far off on small rows
    reference = Tied().serve(tf.constant([1, 7, 49]))
    assert np.abs(after["logits"] - reference["logits"].numpy()).max() < 0.05 * np.abs(
        reference["logits"].numpy()).max()


def test_the_file_declares_the_computed_runtime(per_row_int8):
    model = tflite.read_model(per_row_int8)
    for md in model.metadata:  # a file that claims an old runtime, as the converter's did
        if md.name == op_versions.METADATA_NAME:
            model.buffers[md.buffer].data = np.frombuffer(b"1.5.0".ljust(16, b"\0"), np.uint8)
    stale = tflite.write_model(model)
    assert op_versions.metadata_runtime(stale) == "1.5.0"
    assert op_versions.metadata_runtime(op_versions.with_computed_versions(stale)) == "2.18.0"
