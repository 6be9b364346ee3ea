# Long context: the baby GPT's recipe at block_size 2048 (4096 with --block_size=4096), the same 16,384
# tokens per step, for comparing quality where the efficient families are meant to win. Put it after a
# model's config, which it leaves alone otherwise (a sparse window stays what that config set):
#   python train_runner.py config/train_shakespeare_char_sparse.py config/train_longctx.py
#   python train_runner.py config/bakeoff.py config/train_longctx.py --models_to_test=vanilla,sparse,linear,delta \
#       --sweep_dir=results/longctx
block_size = 2048
batch_size = 16384 // block_size
out_dir = "out-longctx"
if device == "cpu":  # noqa: F821 (train_runner settles `device` before reading this file)
    block_size, batch_size = 256, 4
