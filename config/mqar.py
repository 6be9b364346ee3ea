"""Multi-query associative recall (data/mqar; Zoology): 2-layer models scored at the queries; --stage=mqar sweeps widths x rates."""
dataset = "mqar"
out_dir = f"out-mqar-{profile}"
models = "vanilla,sparse,linear,delta,delta_product"
recipes = False  # config/models/ holds settings tuned on Shakespeare, not on recall
n_layer, n_head, dropout, weight_decay = 2, 2, 0.0, 0.1
short_conv = 4  # as in Zoology, every mixer gets a short convolution: recall needs each position's predecessor
pos_emb = "none"  # the convolution carries order; every family takes 'none'
eval_interval, eval_iters, log_interval, warmup_iters = 500, 20, 100, 100
learning_rate, min_lr = 3e-3, 3e-4

if profile == "cpu":  # data/mqar's cpu profile: vocabulary 256, sequences of 32-256 tokens
    block_size, batch_size, n_embd, mqar_widths = 256, 32, 64, "32,64"  # trained on up to 64 tokens, tested up to 256
    max_iters = lr_decay_iters = 600
    learning_rates = "3e-3"
    eval_interval, eval_iters, compile = 200, 5, False
else:  # Zoology's setting: vocabulary 8,192, sequences of 64-1024 tokens, and 2,048
    block_size, batch_size, n_embd, mqar_widths = 2048, 256, 128, "64,128,256"  # trained on up to 256, tested up to 2,048
    max_iters = lr_decay_iters = 4000
    # Zoology's log-spaced grid and one step lower: softmax at width 128 learned at none of 1e-3 ... 1e-2 (results/h100-mqar)
    learning_rates = "3.2e-4,1e-3,3.2e-3,1e-2"
    lr_bracket = 1  # a best at an end of the grid gets one run a step past it (8 of 15 rows, results/h100-mqar)
    runs_per_gpu = 3  # 2-layer models leave an H100 idle between launches: three share it (results/h100-sharing)
