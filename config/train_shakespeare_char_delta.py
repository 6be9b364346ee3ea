# DeltaNet (Yang et al. 2024) in the baby GPT: 6 heads of 64, L2-normalised q/k.
# 10.66M parameters against vanilla's 10.65M (counted on the built model).
# flash-linear-attention's chunk kernel on CUDA, the PyTorch chunked (WY) form elsewhere.
exec(open(__file__.replace("_delta.py", ".py")).read())  # noqa: S102 (the baby GPT, GPU or CPU profile)

model_type = "delta"
out_dir = "out-shakespeare-char-delta"
variant = "deltanet"
# FLA's kernels are PyTorch operators here (no graph break): the step replays as CUDA graphs, 15.39
# ms/iter alone on the H100 against 26.28 without them (results/h100-delta)
compile_mode = "reduce-overhead"
if n_embd == 384:  # noqa: F821 (set by the base file)
    # tuned on the H100 (results/h100-delta, tune_rounds.json, rounds 1-11): it overfits from iter ~750 and
    # the short convolutions make it worse, so none, and a schedule ending at 1500. At 1e-3 with dropout 0.3
    # and weight decay 0.5 its mean over seeds was 1.5126 (the published bake-off), at 3e-3 1.5009 over five
    # seeds (rounds 9-10, best evaluations at ~1100, overfitting after). At 3e-3 with dropout 0.35 and weight
    # decay 1.5 the same five seeds gave 1.4897 ± 0.0110, each best at 1400-1500 (round 11; decay 1.0: 1.4948).
    use_short_conv, dropout, learning_rate, weight_decay = False, 0.35, 3e-3, 1.5
    max_iters = lr_decay_iters = 1500
