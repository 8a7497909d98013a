"""Take GPT-2 from a notebook to a phone: fine-tune, distill and export keras-hub GPT-2 models."""

import os

# Keras 3 runs on TensorFlow here: the export stages need TF graphs. Quiet TF's C++ logging.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
