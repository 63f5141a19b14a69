"""N:M and unstructured sparsity: patterns, masks, pruning methods, compressed storage."""
