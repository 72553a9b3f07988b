"""Evaluation: questions, answer sampling, judged rates, figures and training dynamics."""
