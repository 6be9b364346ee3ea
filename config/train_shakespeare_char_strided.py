# Sparse Transformer's strided pattern (Child et al. 2019) with stride √block_size (16 at 256):
# the previous 16 tokens, and every 16th token before them.
exec(open(__file__.replace("_strided.py", ".py")).read())  # noqa: S102 (the baby GPT, GPU or CPU profile)

model_type = "sparse"
out_dir = "out-shakespeare-char-strided"
pattern = "strided"
stride = round(block_size ** 0.5)  # noqa: F821 (set by the base file)
