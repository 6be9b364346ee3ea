# The baby GPT on char-level Shakespeare (nanoGPT's config/train_shakespeare_char.py).
# On a GPU: 6 layers, 6 heads, 384 wide, context 256, 3000 iters (~10.7M parameters).
# On a CPU: a small profile of the same recipe that finishes in minutes on 2 cores.

out_dir = "out-shakespeare-char"
eval_interval = 250  # the baby GPT overfits: evaluate often, keep the best
eval_iters = 200
log_interval = 10
always_save_checkpoint = False

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3
max_iters = 3000
lr_decay_iters = 3000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

if device == "cpu":  # noqa: F821 (train_runner settles `device` before reading this file)
    n_layer, n_head, n_embd, block_size, batch_size = 4, 4, 128, 64, 12
    dropout = 0.0
    max_iters = lr_decay_iters = 2000
    eval_iters, log_interval = 20, 50
    compile = False
