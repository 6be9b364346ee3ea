"""Sparse Transformer's fixed pattern (Child et al. 2019): blocks of sqrt(block_size), the last quarter of each summarising it."""
stride = round(block_size**0.5)
summary = stride // 4
