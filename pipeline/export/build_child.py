"""A target's SavedModel built in a child process: preset in, SavedModel folder and facts out.

Loading the Keras model, generating the expected texts and building the TF graph leave
gigabytes resident in the process that did them, after both models are dropped (at GPT-2
medium the exporting process stayed at about 5 GB; not glibc's arenas: a fixed mmap
threshold changed nothing), and
the converter's child then comes on top (12.3-12.6 GB in all). Built in a child, that memory
goes back to the system when the child exits: the exporting process never holds a model
while the converter runs. `children.build_in_child` starts it.

    python -m pipeline.export.build_child CONFIG_YAML text|litertlm PRESET SAVED_MODEL FACTS_JSON
"""

from __future__ import annotations

from pipeline.config import RunConfig
from pipeline.processes import config_child_main


def main(cfg: RunConfig, target: str, source: str, saved_model_dir: str) -> dict:
    if target == "text":
        from pipeline.export.text import build_text_model as build
    else:
        from pipeline.export.litertlm import build_streaming_model as build
    return build(cfg, source, saved_model_dir)


if __name__ == "__main__":
    config_child_main(main)
