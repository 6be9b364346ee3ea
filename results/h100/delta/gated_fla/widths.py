"""FLA's gated delta-product operator (model_delta.fla_gated_delta_product, FLA's kernels with model_delta's
chunk_bwd_dqkwg where FLA refuses its own) at keys of K and values of V, against the PyTorch chunked form:
o and each gradient's relative error, as one JSON line. A fault ends the CUDA context: run it alone.

    python results/h100/delta/gated_fla/widths.py K V [B T H n]
"""
import json
import sys

import torch

sys.path.insert(0, ".")
import model_delta  # noqa: E402

K, V, *rest = map(int, sys.argv[1:])
B, T, H, n = rest or (64, 256, 4, 2)
torch.manual_seed(0)
q = torch.randn(B, T, H, K, device="cuda")
k, v = torch.randn(B, T * n, H, K, device="cuda"), torch.randn(B, T * n, H, V, device="cuda")
beta, g = torch.rand(B, T * n, H, device="cuda"), -torch.rand(B, T, H, device="cuda")
go = torch.randn(B, T, H, V, device="cuda")
fast_in = [t.bfloat16().requires_grad_() for t in (q, k, v, beta)] + [g.clone().requires_grad_()]
qf, kf, vf, bf, gf = fast_in
o = model_delta.fla_gated_delta_product(qf, kf, vf, gf, bf, K ** -0.5, n)[0]
fast = [o, *torch.autograd.grad(o, fast_in, go.bfloat16())]
ref_in = [t.clone().requires_grad_() for t in (q, k, v, beta, g)]
qn = torch.nn.functional.normalize(ref_in[0], dim=-1) * K ** -0.5
kn = torch.nn.functional.normalize(ref_in[1], dim=-1)
la = torch.stack([ref_in[4]] + [torch.zeros_like(ref_in[4])] * (n - 1), 2).flatten(1, 2)
ref = model_delta.chunked_delta_rule(*(t.transpose(1, 2) for t in (qn, kn, ref_in[2], ref_in[3], la)),
                                     chunk_size=64 // n * n, read_every=n)[0].transpose(1, 2)
expected = [ref, *torch.autograd.grad(ref, ref_in, go)]
errors = {name: round(((a.float() - b).norm() / b.norm()).item(), 5)
          for name, a, b in zip(("o", "dq", "dk", "dv", "dbeta", "dg"), fast, expected)}
print(json.dumps({"K": K, "V": V, "B": B, "T": T, "H": H, "n": n, "errors": errors}))
