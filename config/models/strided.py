"""Sparse Transformer's strided pattern (Child et al. 2019): stride sqrt(block_size)."""
stride = round(block_size**0.5)
