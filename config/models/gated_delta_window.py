"""Gated DeltaNet alternating with sliding-window softmax over the last block_size/4 tokens (Gated DeltaNet's H1)."""
# the gated layers at the head sizes that match gated_delta to vanilla (config/models/gated_delta.py; on a CPU, the sweep's)
layers = "gated_delta:head_k_dim=32:head_v_dim=64" if profile == "gpu" else "gated_delta:head_v_dim=16"
layers += f",window:window={block_size // 4}"
