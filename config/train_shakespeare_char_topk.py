# Content-based top-k sparse attention: each token keeps its block_size/8 highest-scoring past keys
# (32 at 256). The scores are computed densely, so this saves no compute; it measures quality.
exec(open(__file__.replace("_topk.py", ".py")).read())  # noqa: S102 (the baby GPT, GPU or CPU profile)

model_type = "sparse"
out_dir = "out-shakespeare-char-topk"
pattern = "topk"
topk = block_size // 8  # noqa: F821 (set by the base file)
