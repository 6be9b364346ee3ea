# Sparse Transformer's fixed pattern (Child et al. 2019): blocks of √block_size tokens (16 at 256);
# each token sees its own block and the last quarter (c = 4) of every earlier block.
exec(open(__file__.replace("_fixed.py", ".py")).read())  # noqa: S102 (the baby GPT, GPU or CPU profile)

model_type = "sparse"
out_dir = "out-shakespeare-char-fixed"
pattern = "fixed"
stride = round(block_size ** 0.5)  # noqa: F821 (set by the base file)
summary = stride // 4
