# DeltaNet (Yang et al. 2024) in the baby GPT: 6 heads of 64, short convolutions, L2-normalised q/k.
# 10.69M parameters against vanilla's 10.65M (counted on the built model).
# flash-linear-attention's chunk kernel on CUDA, the PyTorch chunked (WY) form elsewhere.
exec(open(__file__.replace("_delta.py", ".py")).read())  # noqa: S102 (the baby GPT, GPU or CPU profile)

model_type = "delta"
out_dir = "out-shakespeare-char-delta"
variant = "deltanet"
compile_mode = "default"  # FLA's kernels are graph breaks; CUDA-graph replay across them is not assumed
