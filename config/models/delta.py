"""DeltaNet (Yang et al. 2024), tuned on the baby GPT's GPU profile (results/h100-delta)."""
if profile == "gpu" and dataset == "shakespeare_char":
    # it overfits from iteration ~750: no short convolutions, strong regularisation, a schedule ending at 1500
    use_short_conv, dropout, learning_rate, weight_decay = False, 0.35, 3e-3, 1.5
    max_iters = lr_decay_iters = 1500
