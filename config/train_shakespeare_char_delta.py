# DeltaNet (Yang et al. 2024) in the baby GPT: 6 heads of 64, L2-normalised q/k.
# 10.66M parameters against vanilla's 10.65M (counted on the built model).
# flash-linear-attention's chunk kernel on CUDA, the PyTorch chunked (WY) form elsewhere.
exec(open(__file__.replace("_delta.py", ".py")).read())  # noqa: S102 (the baby GPT, GPU or CPU profile)

model_type = "delta"
out_dir = "out-shakespeare-char-delta"
variant = "deltanet"
# FLA's kernels are PyTorch operators here (no graph break): the step replays as CUDA graphs, 15.39
# ms/iter alone on the H100 against 26.28 without them (results/h100/delta, kept_5656c55)
compile_mode = "reduce-overhead"
if n_embd == 384:  # noqa: F821 (set by the base file)
    # tuned on the H100 (results/h100/delta/tune_rounds.json, rounds 1-4): it overfits from iter ~750 and
    # the short convolutions make it worse; without them, dropout 0.3, 1e-3 on a schedule ending at 1500:
    # best val 1.5061 at weight decay 0.5, 1.5108 at 0.1 (seed 1338: 1.5169). Gated DeltaNet gets 1.4775.
    # Rounds 5-6 (14 more variations) landed at 1.501-1.523, inside the seeds' spread: the recipe stays.
    use_short_conv, dropout, learning_rate, weight_decay = False, 0.3, 1e-3, 0.5
    max_iters = lr_decay_iters = 1500
