# Multi-query associative recall (data/mqar; Zoology, Arora et al. 2023): 2-layer models, the loss and
# the accuracy only at the query positions.
#   python data/mqar/prepare.py                        # (GPU) Zoology's setting; --profile=small for a CPU
#   python train_runner.py config/mqar.py              # one model: --model_type=...
#   python train_runner.py config/mqar.py --stage=mqar # every family of `models` at each of mqar_widths and
#                                                      # learning_rates; the best rate of each goes in the table
dataset = "mqar"
out_dir = "out-mqar"
models = "vanilla,sparse,linear,delta,delta_product"
n_layer, n_head, dropout, weight_decay = 2, 2, 0.0, 0.1
short_conv = 4  # as in Zoology, every mixer gets a short convolution: recall needs each position's predecessor
pos_emb = "none"  # the convolution carries order; every family takes 'none'
eval_interval, eval_iters, log_interval, warmup_iters = 500, 20, 100, 100
if device == "cpu":  # noqa: F821 (train_runner settles `device` before reading this file): the small profile
    block_size, batch_size, n_embd, mqar_widths = 64, 32, 64, "32,64"
    learning_rate, min_lr, max_iters, lr_decay_iters, learning_rates = 3e-3, 3e-4, 600, 600, "3e-3"
    eval_interval, eval_iters, log_interval, compile = 200, 5, 100, False
    sweep_dir = "out-mqar-cpu"
else:
    block_size, batch_size, n_embd, mqar_widths = 1024, 256, 128, "64,128,256"
    learning_rate, min_lr, max_iters, lr_decay_iters = 3e-3, 3e-4, 4000, 4000
    # log-spaced as Zoology's 1e-3 ... 10^-1.5, one step lower too: softmax at width 128 learned at none of
    # 1e-3 ... 1e-2 in 4000 iterations (results/h100-mqar), and Zoology's own width-128 runs go down to 1e-4
    learning_rates = "3.2e-4,1e-3,3.2e-3,1e-2"
    # where a family's best at a width is the lowest or highest of these (8 of the 15 in results/h100-mqar),
    # one more run a grid step past it: 1e-4 below, 3.2e-2 (Zoology's top, 10^-1.5) above
    lr_bracket = 1
    # 2-layer models up to 256 wide leave an H100 idle between launches: three runs share it
    # (results/h100-sharing: 2x the throughput for a launch-bound model)
    runs_per_gpu = 3
    sweep_dir = "out-mqar-gpu"
