"""The geometry-aware data filter: sample scores, which rows to drop, byte-exact output files, the run."""
