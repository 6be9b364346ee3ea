# Does FLA's parallel_nsa equal FLA's own naive_nsa and our reference, per head dim and block layout?
# bf16 inputs, window 0, whole outputs and each branch alone (gate of the other set to 0).
# Run from the repository root on a GPU with flash-linear-attention: PYTHONPATH=. python results/h100/nsa/...
import torch
from fla.ops.nsa.naive import naive_nsa
from fla.ops.nsa.parallel import parallel_nsa

import model_nsa


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


for D, bs, n in ((32, 32, 4), (44, 32, 4), (48, 32, 4), (64, 64, 16)):
    torch.manual_seed(0)
    T = 1024
    q = (torch.randn(1, T, 16, D, device="cuda") * 2).bfloat16()
    k = (torch.randn(1, T, 1, D, device="cuda") * 2).bfloat16()
    v = torch.randn(1, T, 1, D, device="cuda").bfloat16()
    g = torch.rand(1, T, 16, device="cuda").bfloat16()
    z = torch.zeros_like(g)
    cfg = model_nsa.GPTConfig(n_embd=16 * D, n_head=16, n_kv_head=1, cmp_block=bs, cmp_stride=bs, select_block=bs,
                              select_count=n, window=0)
    qq, kk, vv = (t.transpose(1, 2) for t in (q, k, v))
    kc, vc = model_nsa.compress(kk, cfg), model_nsa.compress(vv, cfg)

    def fla(g_cmp, g_slc):
        return parallel_nsa(q, k, v, g_cmp, g_slc, None, block_counts=n, block_size=bs).float()

    def ours(g_cmp, g_slc):
        gates = torch.stack([g_cmp, g_slc, z], -1).transpose(1, 2).float()
        return model_nsa.nsa_reference(qq, kk, vv, kc, vc, gates, cfg).transpose(1, 2).float()

    nai = naive_nsa(q, k, v, g, g, None, block_counts=n, block_size=bs).float()
    print(f"D={D} bs={bs} n={n}: parallel vs naive {rel(fla(g, g), nai):.4f}  parallel vs ours "
          f"{rel(fla(g, g), ours(g, g)):.4f}  naive vs ours {rel(nai, ours(g, g)):.4f}  | cmp only "
          f"{rel(fla(g, z), ours(g, z)):.4f} slc only {rel(fla(z, g), ours(z, g)):.4f}")
