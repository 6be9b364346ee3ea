# Gated DeltaNet (Yang et al., ICLR 2025) in the baby GPT. The output gate and decay cost parameters,
# so keys are 32 wide and values 64 per head: 10.69M parameters against vanilla's 10.65M.
# Where FLA's gated kernels cannot run (Triton >= 3.4, < 3.7.1 on Hopper), the PyTorch form runs.
exec(open(__file__.replace("_gated_delta.py", ".py")).read())  # noqa: S102 (the baby GPT, GPU or CPU profile)

model_type = "delta"
out_dir = "out-shakespeare-char-gated-delta"
variant = "gated_deltanet"
head_k_dim, head_v_dim = (32, 64) if n_embd == 384 else (0, 0)  # noqa: F821 (set by the base file)
compile_mode = "default"
