"""Where a hybrid's softmax layers go (lab/placement.py), stacked on a task's config: Shakespeare's or config/mqar.py's."""
stage = "placement"
out_dir = f"out-placement-{dataset}-{profile}"
recipes = False  # every row trains at the same settings: a pure model is a one-family hybrid here
n_layer = 6
placement_mixer = "rope"
seeds = "1337,1338,1339"
learning_rates = "1e-3"  # one rate for every row: the study compares placements, each family is tuned in the bake-off

if profile == "cpu":  # a reduced form on 2 cores: DeltaNet only, two seeds; on recall config/mqar.py's 2 layers
    placement_bases, seeds = "delta", "1337,1338"
    if dataset == "mqar":
        n_layer, placements, learning_rates = 2, "0,1", "3e-3"
    else:
        n_layer, n_embd, n_head, placements, learning_rates = 4, 64, 2, "0,3,1+3", "2e-3"
        max_iters = lr_decay_iters = 300
        eval_interval, log_interval, warmup_iters = 150, 100, 10
else:
    # Gated DeltaNet at the head sizes that match it to vanilla (config/models/gated_delta.py)
    placement_bases = "delta,gated_delta:head_k_dim=32:head_v_dim=64"
    compile = False  # 51 short runs a task: compiling each cost more than it saved
    runs_per_gpu = 4  # eager runs are launch-bound: four share an H100
    if dataset == "mqar":
        n_embd, batch_size, max_iters, lr_decay_iters, learning_rates = 128, 64, 2000, 2000, "1e-3"
    else:
        max_iters = lr_decay_iters = 1000  # the best val of every row came by ~1000 at 1e-3
        eval_iters, eval_windows = 0, 512  # val whole (exact)
