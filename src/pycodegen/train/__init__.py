"""Training: one accelerate-based loop for every model family (checkpoints, resume, budgets)."""
