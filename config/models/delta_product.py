"""Gated DeltaProduct (Siems et al. 2025), 2 Householder steps a token; each step has its own key and value."""
num_householder = 2
if profile == "gpu":
    n_head, head_k_dim, head_v_dim = 4, 64, 48  # 10.70M against vanilla's 10.65M
