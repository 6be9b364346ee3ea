# Based (Arora et al. 2024) in the baby GPT: Taylor feature map on 16-dim projected queries/keys,
# plus a 64-token sliding-window softmax branch.
exec(open(__file__.replace("_based.py", ".py")).read())  # noqa: S102 (the baby GPT, GPU or CPU profile)

model_type = "linear"
out_dir = "out-shakespeare-char-based"
feature_map = "taylor"
n_features = 16
based_window = 64
compile_mode = "default"
