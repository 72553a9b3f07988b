"""Toy models of superposition (Chapter 1): models, the spillover law, figures."""
