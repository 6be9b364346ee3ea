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

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import model_delta  # noqa: E402


class KernelStandIn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, v):
        return v.new_zeros(*q.shape[:3], v.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        return None, None


def kept_bytes(attn, x):
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        attn(x, torch.arange(x.shape[1]))
    return sum(kept.values())


model_delta.DeltaAttention.kernel_path = lambda self, device_type: "fla"
model_delta.fla_kernel = lambda variant: lambda q, k, v, *a, **kw: (KernelStandIn.apply(q, v), None)
model_delta.fla_delta_rule = lambda q, k, v, beta, scale: (KernelStandIn.apply(q, v),)  # DeltaNet's, since 4639b3c
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
