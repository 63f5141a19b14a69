"""Evaluation: numerical error metrics and test tensors (perplexity comes with the model loop)."""
