"""FLA's gated delta-product operator (model_delta.fla_gated_delta_product) in Triton's interpreter on the CPU,
against the per-token recurrence in float64: o's and each gradient's relative error. MODE 'fla' runs FLA's own
chunk_bwd_dqkwg kernel, 'ours' the PyTorch twin registered in its place (model_delta at commits 2c06520-992a9a5,
where fla_refuses_gated existed). FLA 0.6.0's chunk_gated_delta_product_fwd_h calls `.to` on a loop index, which
the interpreter cannot: run it on a copy of fla with `i_t.to(tl.int64)` replaced by `tl.cast(i_t, tl.int64)`:

    cp -r $(python -c 'import fla, os; print(os.path.dirname(fla.__file__))') /tmp/flapatch/
    grep -rl 'i_t.to(tl.int64)' /tmp/flapatch/fla | xargs sed -i 's/i_t\\.to(tl\\.int64)/tl.cast(i_t, tl.int64)/g'
    PYTHONPATH=/tmp/flapatch TRITON_INTERPRET=1 python results/h100/delta/gated_fla/interpreted.py MODE n [T K]
"""
import json
import sys

import torch
from triton.runtime.autotuner import Autotuner

prune = Autotuner.prune_configs
Autotuner.prune_configs = lambda self, kwargs: prune(self, kwargs)[:1]
sys.path.insert(0, ".")
import model_delta  # noqa: E402

mode = sys.argv[1]  # "fla" (FLA's own dqkwg kernel) or "ours" (the stand-in)
n = int(sys.argv[2])
if mode == "ours":
    model_delta.fla_refuses_gated = lambda: True
B, T, H = 1, int(sys.argv[3]) if len(sys.argv) > 3 else 128, 1
K = V = int(sys.argv[4]) if len(sys.argv) > 4 else 16
torch.manual_seed(0)
steps = max(n, 1)
inputs = [torch.randn(B, T, H, K), torch.randn(B, T * steps, H, K), torch.randn(B, T * steps, H, V),
          torch.rand(B, T * steps, H), -torch.rand(B, T, H)]
go = torch.randn(B, T, H, V)
fast_in = [t.clone().requires_grad_() for t in inputs]
q, k, v, beta, g = fast_in
o = model_delta.fla_gated_delta_product(q, k, v, g, beta, K ** -0.5, n)[0]
fast = [o, *torch.autograd.grad(o, fast_in, go)]
ref_in = [t.double().requires_grad_() for t in inputs]
qn = torch.nn.functional.normalize(ref_in[0], dim=-1) * K ** -0.5
kn = torch.nn.functional.normalize(ref_in[1], dim=-1)
qs = torch.zeros(B, T, steps, H, K, dtype=torch.double)  # each token's query at its last sub-step
qs[:, :, -1] = qn
qn = qs.flatten(1, 2)
la = torch.stack([ref_in[4]] + [torch.zeros_like(ref_in[4])] * (n - 1), 2).flatten(1, 2)
ref = model_delta.recurrent_delta_rule(*(t.transpose(1, 2) for t in (qn, kn, ref_in[2], ref_in[3], la)))[0].transpose(1, 2)
ref = ref.reshape(B, T, steps, H, V)[:, :, -1]
expected = [ref, *torch.autograd.grad(ref, ref_in, go.double())]
errors = {name: round(((a.double() - b).norm() / b.norm()).item(), 6)
          for name, a, b in zip(("o", "dq", "dk", "dv", "dbeta", "dg"), fast, expected)}
print(mode, n, T, json.dumps(errors))
