"""Content-based top-k sparse attention: each token keeps its block_size/8 highest-scoring past keys."""
topk = block_size // 8
