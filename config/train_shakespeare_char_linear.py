# Linear attention (ELU+1 feature map) in the baby GPT: the settings of config/train_shakespeare_char.py,
# with the family switched. flash-linear-attention's kernel runs on CUDA, the PyTorch chunked form elsewhere.
exec(open(__file__.replace("_linear.py", ".py")).read())  # noqa: S102 (the baby GPT, GPU or CPU profile)

model_type = "linear"
out_dir = "out-shakespeare-char-linear"
feature_map = "elu"
compile_mode = "default"  # FLA's kernels are graph breaks; CUDA-graph replay across them is not assumed
