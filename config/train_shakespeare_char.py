"""The baby GPT on char-level Shakespeare (nanoGPT's shakespeare_char): 6x384 at context 256 on a GPU, 4x128 at 64 on a CPU."""
out_dir = "out-shakespeare-char"
eval_interval = 250  # the baby GPT overfits: evaluate often, keep the best
eval_iters = 200
log_interval = 10
always_save_checkpoint = False

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size, block_size = 64, 256
n_layer, n_head, n_embd, dropout = 6, 6, 384, 0.2

learning_rate, min_lr, beta2 = 1e-3, 1e-4, 0.99
max_iters = lr_decay_iters = 3000
warmup_iters = 100

if profile == "cpu":  # a small profile of the same recipe that finishes in minutes on 2 cores
    n_layer, n_head, n_embd, block_size, batch_size = 4, 4, 128, 64, 12
    dropout = 0.0
    max_iters = lr_decay_iters = 2000
    eval_iters, log_interval = 20, 50
    compile = False
