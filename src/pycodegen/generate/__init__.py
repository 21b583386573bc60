"""`pycodegen generate`: prompt modes and decoding (decoding), benchmark samples (samples), free-form
prompts (freeform), post-processing of raw generations (postprocess)."""
