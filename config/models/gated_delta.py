"""Gated DeltaNet (Yang et al. 2025), tuned on the baby GPT's GPU profile (results/h100-delta)."""
if profile == "gpu":
    head_k_dim, head_v_dim = 32, 64  # the gate and decay cost parameters: 10.69M against vanilla's 10.65M
if profile == "gpu" and dataset == "shakespeare_char":
    use_short_conv, dropout, learning_rate = False, 0.3, 5e-4  # it overfits from iteration ~750
    max_iters = lr_decay_iters = 1500
