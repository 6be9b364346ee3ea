# Sliding-window sparse attention in the baby GPT: each token sees the last block_size/4 tokens
# (64 of the GPU profile's 256). FlexAttention runs it on CUDA, blocked SDPA elsewhere.
# At this context the window saves little compute; the long-context benchmarks show where it does.
exec(open(__file__.replace("_sparse.py", ".py")).read())  # noqa: S102 (the baby GPT, GPU or CPU profile)

model_type = "sparse"
out_dir = "out-shakespeare-char-sparse"
pattern = "sliding_window"
window = block_size // 4  # noqa: F821 (set by the base file)
