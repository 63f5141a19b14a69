"""nmx: algorithm-hardware co-design of efficient LLM inference.

N:M sparsity, low-bit number formats and KV-cache compression, measured on real
models and priced on real and modelled hardware.
"""

__version__ = "0.1.0"
