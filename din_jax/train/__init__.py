"""Training: the step, its programs, the loop and what watches it."""
