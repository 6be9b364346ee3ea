# Sliding window plus global tokens (Longformer-style, causal): the last block_size/4 tokens and the
# first 8 of the sequence.
exec(open(__file__.replace("_local_global.py", ".py")).read())  # noqa: S102 (the baby GPT, GPU or CPU profile)

model_type = "sparse"
out_dir = "out-shakespeare-char-local-global"
pattern = "local_global"
window = block_size // 4  # noqa: F821 (set by the base file)
n_global = 8
