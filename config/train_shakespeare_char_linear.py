# Linear attention (ELU+1 feature map) in the baby GPT: the settings of config/train_shakespeare_char.py,
# with the family switched. The PyTorch chunked form runs everywhere (measured faster than
# flash-linear-attention's kernel on an H100: model_linear.py); --use_fla=True picks FLA's on CUDA.
exec(open(__file__.replace("_linear.py", ".py")).read())  # noqa: S102 (the baby GPT, GPU or CPU profile)

model_type = "linear"
out_dir = "out-shakespeare-char-linear"
feature_map = "elu"
compile_mode = "default"  # FLA's kernels are graph breaks; CUDA-graph training of this family is untried on a GPU
