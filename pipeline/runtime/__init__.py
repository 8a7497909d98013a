"""Running exported files: the Flex interpreter (text model), ai-edge-litert's interpreter and
LiteRT-LM (streaming bundle), and the resident memory the runtime holds. Kept light:
flex_child.py runs in another environment."""
