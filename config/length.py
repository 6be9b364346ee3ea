"""Which families and position schemes extrapolate, stacked on config/bakeoff.py: trained, then evaluated at 1x-16x block_size."""
stage = "length"
out_dir = f"out-length-{profile}"
# softmax with each scheme; each other family with one that extends (learned positions stop at block_size)
models = ("vanilla,rope,vanilla:pos_emb=alibi,vanilla:pos_emb=none,sparse:pos_emb=rope,linear:pos_emb=none,"
          "delta:pos_emb=none,delta_product:pos_emb=none,nsa:pos_emb=rope,delta_softmax,gated_delta_window")

if profile == "cpu":  # 259 s on 2 cores: one rate, near each best at 300 iterations (results/cpu-bakeoff)
    learning_rates, lr_bracket = "3e-3", 0
