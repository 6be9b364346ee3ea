"""The attention op alone, forward + backward, at T = 65,536 (B=1, H=6, D=64, bf16): causal SDPA
against FlexAttention with model_sparse's sliding-window (512) BlockMask, compiled two ways.

    python results/h100/sparse/flex_vs_sdpa.py        # from the repository root, on a GPU
"""

import sys
import time
from pathlib import Path

import torch
from torch.nn.attention.flex_attention import flex_attention

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import model_sparse  # noqa: E402
from train_runner import timed_median  # noqa: E402

T = 65536
q, k, v = (torch.randn(1, 6, T, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
mask = model_sparse.block_mask("sliding_window", 512, 0, 1, 0, T, "cuda")


def median_ms(fn):
    return timed_median(fn, "cuda", trials=20)


def sdpa():
    torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()


print(f"causal SDPA: {median_ms(sdpa):.2f} ms")
for mode in (None, "max-autotune-no-cudagraphs"):
    flex = torch.compile(flex_attention, dynamic=False, mode=mode)

    def step():
        flex(q, k, v, block_mask=mask).sum().backward()
    t0 = time.time()
    step()
    print(f"flex, sliding window 512, compile mode {mode}: {median_ms(step):.2f} ms (first call {time.time() - t0:.0f} s)")
