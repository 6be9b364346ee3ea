"""How far FLA's delta-rule operators are from the PyTorch chunked form: model_delta.fla_delta_rule (n = 0) or
model_delta.fla_gated_delta_product (n >= 1 sub-steps a token; at commits 2c06520-992a9a5, FLA's kernels
with model_delta's chunk_bwd_dqkwg where FLA refuses its own; since, FLA refuses them on Hopper with Triton
< 3.7.1), keys of K and values of V, inputs in DTYPE (bfloat16 as the layer runs them, or float32 to see the
kernels' own error without bf16's). The reference (float32) takes the
same rounded inputs, so input rounding is not counted. Prints o's and each gradient's relative error as
one JSON line. A fault ends the CUDA context: run it alone. In float32 each of FLA's autotuned kernels runs its
first config: its tuning took over 120 s a call for these dtypes, and this checks arithmetic, not speed.

    python results/h100/delta/gated_fla/precision.py K V n DTYPE [B T H]
"""
import json
import sys

import torch
from triton.runtime.autotuner import Autotuner

sys.path.insert(0, ".")
import model_delta  # noqa: E402

K, V, n = map(int, sys.argv[1:4])
dtype = getattr(torch, sys.argv[4])
B, T, H = map(int, sys.argv[5:]) if len(sys.argv) > 5 else (64, 256, 4)
steps = max(n, 1)
if dtype == torch.float32:
    prune = Autotuner.prune_configs
    Autotuner.prune_configs = lambda self, kwargs: prune(self, kwargs)[:1]
torch.backends.cuda.matmul.allow_tf32 = False  # the reference in full float32
torch.manual_seed(0)
inputs = [torch.randn(B, T, H, K, device="cuda"), torch.randn(B, T * steps, H, K, device="cuda"),
          torch.randn(B, T * steps, H, V, device="cuda"), torch.rand(B, T * steps, H, device="cuda")]
inputs = [t.to(dtype) for t in inputs] + [-torch.rand(B, T, H, device="cuda")] * bool(n)
go = torch.randn(B, T, H, V, device="cuda").to(dtype)
fast_in = [t.clone().requires_grad_() for t in inputs]
if n:
    q, k, v, beta, g = fast_in
    o = model_delta.fla_gated_delta_product(q, k, v, g, beta, K ** -0.5, n)[0]
else:
    o = model_delta.fla_delta_rule(*fast_in, K ** -0.5)[0]
fast = [o, *torch.autograd.grad(o, fast_in, go)]
ref_in = [t.float().requires_grad_() for t in inputs]
qn = torch.nn.functional.normalize(ref_in[0], dim=-1) * K ** -0.5  # the kernel's L2 norm, then its scale
kn = torch.nn.functional.normalize(ref_in[1], dim=-1)
la = torch.stack([ref_in[4]] + [torch.zeros_like(ref_in[4])] * (n - 1), 2).flatten(1, 2) if n else None
ref = model_delta.chunked_delta_rule(*(t.transpose(1, 2) for t in (qn, kn, ref_in[2], ref_in[3])),
                                     la if la is None else la.transpose(1, 2), chunk_size=64 // steps * steps,
                                     read_every=steps)[0].transpose(1, 2)
expected = [ref, *torch.autograd.grad(ref, ref_in, go.float())]
errors = {name: round(((a.float() - b).norm() / b.norm()).item(), 5)
          for name, a, b in zip(("o", "dq", "dk", "dv", "dbeta", "dg"), fast, expected)}
print(json.dumps({"K": K, "V": V, "n": n, "dtype": sys.argv[4], "B": B, "T": T, "H": H, "errors": errors}))
