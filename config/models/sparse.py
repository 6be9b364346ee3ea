"""Sliding-window sparse attention: each token sees the last block_size/4 tokens."""
window = block_size // 4
