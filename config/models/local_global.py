"""Sliding window plus global tokens (Longformer-style, causal): the last block_size/4 tokens and the first 8."""
window = block_size // 4
n_global = 8
