"""geomis: emergent misalignment through feature superposition geometry."""

__version__ = "0.1.0"
