"""The distilled student's architecture and its initialisation from the teacher.

A `GPT2Backbone` with fewer layers (default half): embeddings and final LayerNorm copied,
student layer i copied from teacher layer round(i * L_teacher / L_student) (every other layer
at half depth), as DistilGPT2 did. With a smaller `student_hidden_dim` nothing can be copied
and the student starts from random weights (the report says so).
"""

from __future__ import annotations

import keras_hub

from pipeline.config import DistillConfig
from pipeline.errors import ConfigError


def student_layer_sources(teacher_layers: int, student_layers: int) -> list[int]:
    """Returns which teacher layer initialises each student layer (every other at half)."""
    return [min(teacher_layers - 1, round(i * teacher_layers / student_layers))
            for i in range(student_layers)]


def build_student(teacher_backbone, cfg: DistillConfig):
    """Returns (student backbone, init description) for the teacher and the config."""
    layers = cfg.student_layers or max(1, teacher_backbone.num_layers // 2)
    if layers > teacher_backbone.num_layers:
        raise ConfigError(f"distill.student_layers: {layers} is more than the teacher's "
                          f"{teacher_backbone.num_layers} layers")
    config = teacher_backbone.get_config()
    config.update(num_layers=layers)
    hidden = cfg.student_hidden_dim or teacher_backbone.hidden_dim
    if hidden > teacher_backbone.hidden_dim:
        raise ConfigError(f"distill.student_hidden_dim: {hidden} is wider than the teacher's "
                          f"{teacher_backbone.hidden_dim}")
    copied = hidden == teacher_backbone.hidden_dim
    if not copied:
        head_dim = teacher_backbone.hidden_dim // teacher_backbone.num_heads
        if hidden % head_dim:
            raise ConfigError(f"distill.student_hidden_dim: {hidden} is not a multiple of the "
                              f"head size {head_dim}")
        config.update(hidden_dim=hidden, num_heads=hidden // head_dim, intermediate_dim=4 * hidden)
    student = keras_hub.models.GPT2Backbone.from_config(config)
    if not copied:
        return student, {"init": "random (student_hidden_dim differs from the teacher's)",
                         "teacher_layers": []}
    for name in ("token_embedding", "position_embedding", "layer_norm"):
        student.get_layer(name).set_weights(teacher_backbone.get_layer(name).get_weights())
    sources = student_layer_sources(teacher_backbone.num_layers, layers)
    for i, j in enumerate(sources):
        student.get_layer(f"transformer_layer_{i}").set_weights(
            teacher_backbone.get_layer(f"transformer_layer_{j}").get_weights())
    return student, {"init": "copied from the teacher", "teacher_layers": sources}
