# Gated DeltaProduct (Siems et al. 2025), 2 Householder steps per token, in the baby GPT. Each step
# has its own key and value, so 4 heads with keys of 64 and values of 48: 10.70M parameters against
# vanilla's 10.65M (flash-linear-attention's defaults, head_dim 256 and expand_v 2, would be ~3x that).
exec(open(__file__.replace("_delta_product.py", ".py")).read())  # noqa: S102 (the baby GPT, GPU or CPU profile)

model_type = "delta_product"
out_dir = "out-shakespeare-char-delta-product"
variant = "gated_deltaproduct"
num_householder = 2
if n_embd == 384:  # noqa: F821 (set by the base file)
    n_head, head_k_dim, head_v_dim = 4, 64, 48
# train_runner's compile_mode, reduce-overhead, replays its step as CUDA graphs: the PyTorch form (FLA's
# gated kernels refuse the H100's triton 3.6) trained at 23.7 ms/iter alone there, 57.2 without graphs
# (results/h100-delta)
