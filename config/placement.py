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
    max_iters = lr_decay_iters = 2000 if dataset == "mqar" else 1500  # half each task's schedule: 51 runs a task
    runs_per_gpu = 3  # small models leave a GPU idle between launches: three share it (results/h100-sharing)
