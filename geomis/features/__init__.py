"""Feature sets (inducing, control, toxic), their geometry, labels and figures."""
