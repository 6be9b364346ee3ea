# Linear attention (ELU+1 feature map) in the baby GPT: the settings of config/train_shakespeare_char.py,
# with the family switched. The PyTorch chunked form runs everywhere (measured faster than
# flash-linear-attention's kernel on an H100: model_linear.py); --linear_fla=True picks FLA's on CUDA.
exec(open(__file__.replace("_linear.py", ".py")).read())  # noqa: S102 (the baby GPT, GPU or CPU profile)

model_type = "linear"
out_dir = "out-shakespeare-char-linear"
feature_map = "elu"
# the PyTorch form has no graph breaks, so training replays CUDA graphs: 8.16 ms/iter on an H100, against
# 41 on FLA's kernels (results/h100-linear). With --linear_fla=True, say --compile_mode=default too.
compile_mode = "reduce-overhead"
