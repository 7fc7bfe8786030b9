"""The teacher: model backends (transformers, vLLM) and the Ray Serve deployment that hosts them."""
