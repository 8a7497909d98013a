"""Running exported files: the Flex interpreter (text model), ai-edge-litert's interpreter and
LiteRT-LM (streaming bundle). Kept light: flex_child.py runs in another environment."""
