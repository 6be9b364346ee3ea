# Native Sparse Attention (Yuan et al. 2025) in the baby GPT. 16 query heads share 1 K/V head (the
# GQA group NSA's kernel works on), each 44 wide: 10.67M parameters against vanilla's 10.65M.
# At context 256 the paper's sizes (blocks of 32/64, 16 of them, window 512) would let every branch
# see everything, so they are scaled down: keys are compressed in blocks of 32, each query reads 4
# blocks of 32 at full resolution (the first, the previous, its own and one chosen) and a 64-token
# window, i.e. at most ~160 of its 256 past tokens at full resolution, plus 8 block summaries.
# On CUDA the FlexAttention path runs all three branches: at this context it measured faster than
# flash-linear-attention's kernels (one layer fwd+bwd at T=256: 6.8 vs 9.1 ms on an H100, results/h100-nsa).
exec(open(__file__.replace("_nsa.py", ".py")).read())  # noqa: S102 (the baby GPT, GPU or CPU profile)

model_type = "nsa"
out_dir = "out-shakespeare-char-nsa"
n_head, n_kv_head = 16, 1
cmp_block = cmp_stride = select_block = block_size // 8  # noqa: F821 (set by the base file)
select_count = 4
window_size = block_size // 4  # noqa: F821
head_size = 44 if n_embd == 384 else 14  # noqa: F821 (the CPU profile: 128 wide, 0.80M against 0.80M)
use_fla = False
# and its selected branch in model_nsa's Triton kernels where the blocks allow it. Those are custom
# operators, so the compiled model is one graph and the base file's reduce-overhead replays it as CUDA
# graphs: 15.48 ms/iter alone on the H100 (results/h100-one-graph), against 37.4 with a graph break in
# each layer (speed_7cb4cb7) and 49.5 on the flex path (nsa/)
from model_nsa import triton_takes  # noqa: E402

use_triton = device == "cuda" and triton_takes(select_block)  # noqa: F821
