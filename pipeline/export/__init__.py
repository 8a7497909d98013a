"""Export stage and its targets: the text .tflite (`text`), the .litertlm bundle (`litertlm`).

graph.py (GPT-2 in plain TF ops) feeds text_graph.py and streaming_graph.py; tflite.py
converts and quantizes; verify.py checks each file against Keras; stage.py runs every target.
"""
