# does FLA's parallel_nsa equal FLA's own naive_nsa and our reference, per head dim? (bf16 inputs, peaked scores)
import torch
from fla.ops.nsa.naive import naive_nsa
from fla.ops.nsa.parallel import parallel_nsa
import model_nsa
for D, bs, n in ((32, 32, 4), (44, 32, 4), (48, 32, 4), (64, 64, 16)):
    torch.manual_seed(0)
    T = 1024
    q = (torch.randn(1, T, 16, D, device="cuda") * 2).bfloat16()
    k = (torch.randn(1, T, 1, D, device="cuda") * 2).bfloat16()
    v = torch.randn(1, T, 1, D, device="cuda").bfloat16()
    g = torch.rand(1, T, 16, device="cuda").bfloat16()
    z = torch.zeros_like(g)
    par = parallel_nsa(q, k, v, g, g, None, block_counts=n, block_size=bs).float()
    nai = naive_nsa(q, k, v, g, g, None, block_counts=n, block_size=bs).float()
    cfg = model_nsa.GPTConfig(n_embd=16 * D, n_head=16, n_kv_head=1, cmp_block=bs, cmp_stride=bs, select_block=bs,
                              select_count=n, window=0)
    qq, kk, vv = (t.transpose(1, 2) for t in (q, k, v))
    kc, vc = model_nsa.compress(kk, cfg), model_nsa.compress(vv, cfg)
    gates = torch.stack([g, g, z], -1).transpose(1, 2).float()
    ours = model_nsa.nsa_reference(qq, kk, vv, kc, vc, gates, cfg).transpose(1, 2).float()
    par_slc = parallel_nsa(q, k, v, z, g, None, block_counts=n, block_size=bs).float()  # selected only (g_cmp 0)
    ours_slc = model_nsa.nsa_reference(qq, kk, vv, kc, vc, torch.stack([z, g, z], -1).transpose(1, 2).float(), cfg).transpose(1, 2).float()
    par_cmp = parallel_nsa(q, k, v, g, z, None, block_counts=n, block_size=bs).float()
    ours_cmp = model_nsa.nsa_reference(qq, kk, vv, kc, vc, torch.stack([g, z, z], -1).transpose(1, 2).float(), cfg).transpose(1, 2).float()
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()
    print(f"D={D} bs={bs} n={n}: parallel vs naive {rel(par, nai):.4f}  parallel vs ours {rel(par, ours):.4f}  "
          f"naive vs ours {rel(nai, ours):.4f}  | cmp only {rel(par_cmp, ours_cmp):.4f} slc only {rel(par_slc, ours_slc):.4f}")
