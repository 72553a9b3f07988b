"""Judges that score answers for alignment and coherence: rubric, reply parsing, OpenAI-compatible, local, offline."""
