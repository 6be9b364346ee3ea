"""Long context, stacked after a task's config: the same 16,384 tokens a step at block_size 2048 (256 on a CPU)."""
block_size = 2048 if profile == "gpu" else 256
batch_size = (16384 if profile == "gpu" else 1024) // block_size
out_dir = "out-longctx"
