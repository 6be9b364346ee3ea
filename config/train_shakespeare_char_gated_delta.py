# Gated DeltaNet (Yang et al., ICLR 2025) in the baby GPT. The output gate and decay cost parameters,
# so keys are 32 wide and values 64 per head: 10.69M parameters against vanilla's 10.65M.
# Where FLA's gated kernels cannot run (Triton >= 3.4, < 3.7.1 on Hopper), the PyTorch form runs.
exec(open(__file__.replace("_gated_delta.py", ".py")).read())  # noqa: S102 (the baby GPT, GPU or CPU profile)

model_type = "delta"
out_dir = "out-shakespeare-char-gated-delta"
variant = "gated_deltanet"
head_k_dim, head_v_dim = (32, 64) if n_embd == 384 else (0, 0)  # noqa: F821 (set by the base file)
# the PyTorch form (FLA's gated kernels refuse the H100's triton 3.6) has no graph breaks: CUDA graphs
# replay its launch-bound step at 15.4 ms/iter alone on the H100 (results/h100-delta)
compile_mode = "reduce-overhead"
if n_embd == 384:  # noqa: F821 (set by the base file)
    # tuned on the H100 (results/h100-delta): every delta-rule model fits the training
    # set fast and overfits from iter ~750, and the short convolutions make it worse. Without them, at
    # dropout 0.3 and 5e-4 on a schedule ending at 1500: best val 1.4775 (seed 1337), 1.4863 (1338, at
    # 1400 of 1500), against 1.5044-1.5159 with them and 1.5101 on the 3000-iteration schedule.
    use_short_conv, dropout, learning_rate = False, 0.3, 5e-4
    max_iters = lr_decay_iters = 1500
