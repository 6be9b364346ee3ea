"""Native Sparse Attention (Yuan et al. 2025), its block sizes scaled to the context (16 query heads share a K/V head)."""
n_head, n_kv_head = 16, 1
cmp_block = cmp_stride = select_block = block_size // 8
select_count = 4
window_size = block_size // 4
head_size = 44 if profile == "gpu" else 14  # matched: 10.67M against vanilla's 10.65M (CPU: 0.80M against 0.80M)
use_fla = False  # FlexAttention plus our Triton selection was faster at this context (results/h100-nsa)
use_triton = profile == "gpu" and select_block >= 16 and select_block & (select_block - 1) == 0  # Triton: a power of two >= 16
