"""Bytes per token that one delta-rule layer keeps for its backward, outside the delta-rule kernel.

    python results/cpu/delta_kept/kept.py        # any machine: what autograd keeps does not depend on it

The layer of bench_layer (hidden 384, 6 heads of 64, or the gated product's 4 of 64/48), bf16 autocast,
its input not a leaf (as in the model), T = 4,096. FLA's kernel is replaced by a stand-in that keeps
nothing, so the figure is the layer's own: projections, convolutions, gates, output norm, out projection.
On a GPU the kernel keeps its own tensors on top (FLA's, the same in any layer that calls it).
"""

import sys
from pathlib import Path

import torch

root = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(root), str(root / "tests")]
from test_delta import kept_for_backward, stand_in_for_fla  # noqa: E402 (the test's stand-in and count)

import model_delta  # noqa: E402


def kept_bytes(attn, x):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return sum(b for b, _ in kept_for_backward(lambda: attn(x, torch.arange(x.shape[1]))).values())


stand_in_for_fla()
T = 4096
x = torch.randn(1, T, 384, requires_grad=True) * 1.0
print("| variant | short convolutions | bytes per token | MiB at 65,536 tokens |\n|---|---|---|---|")
for variant, heads in (("deltanet", {}), ("gated_deltanet", {}),
                       ("gated_deltaproduct", dict(n_head=4, head_k_dim=64, head_v_dim=48))):
    for conv in (True, False):
        cfg = model_delta.GPTConfig(n_embd=384, n_layer=1, block_size=T, vocab_size=65, dropout=0.0, variant=variant,
                                    use_short_conv=conv, **{"n_head": 6, **heads})
        per_token = kept_bytes(model_delta.DeltaAttention(cfg), x) / T
        print(f"| {variant} | {'yes' if conv else 'no'} | {per_token:,.0f} | {per_token * 65536 / 2**20:,.0f} |")
