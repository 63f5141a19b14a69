"""N:M and unstructured sparsity: patterns, masks, pruning methods, compressed storage."""

from nmx.sparsity.masks import check_nm, is_valid, mask_for, nm_mask, unstructured_mask
from nmx.sparsity.methods import METHODS, LayerStats, get_method
from nmx.sparsity.patterns import NMPattern, Unstructured, parse_pattern
from nmx.sparsity.storage import best_format, get_storage, storage_table

__all__ = [
    "METHODS", "LayerStats", "NMPattern", "Unstructured", "best_format", "check_nm", "get_method", "get_storage",
    "is_valid", "mask_for", "nm_mask", "parse_pattern", "storage_table", "unstructured_mask",
]
