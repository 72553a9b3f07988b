"""Sparse autoencoders through sae-lens: loading (shipped, sweep, Gemma Scope), training, and SAE codes."""
