"""flash-linear-attention 0.6.0's own chunk_delta_rule (its public entry point, random bf16 inputs, forward and
backward) at the head sizes our DeltaNet runs, each shape in its own process: an illegal memory access ends
a process's CUDA context. Asks whether the fault in test_delta's GPU test of DeltaNet with an output gate
(keys 32, values 64: hopper_warps.py) is FLA's at that shape or ours.
  python results/h100/delta/fla_shapes.py OUT_JSON
"""
import json
import subprocess
import sys

CHILD = r"""
import sys, json, torch
import torch.nn.functional as F
from fla.ops.delta_rule import chunk_delta_rule
B, T, H, K, V = json.loads(sys.argv[1])
torch.manual_seed(0)
q, k = (torch.randn(B, T, H, K, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
v = torch.randn(B, T, H, V, device="cuda", dtype=torch.bfloat16, requires_grad=True)
beta = torch.rand(B, T, H, device="cuda", dtype=torch.bfloat16).requires_grad_()
o, _ = chunk_delta_rule(q, k, v, beta, scale=K ** -0.5, use_qk_l2norm_in_kernel=True)
o.float().square().sum().backward()
torch.cuda.synchronize()
print(json.dumps(dict(finite=all(bool(t.grad.isfinite().all()) for t in (q, k, v, beta)))))
"""

SHAPES = [  # B, T, H, K, V
    (4, 1024, 4, 32, 64),  # the GPU test's (n_head 4, n_embd 256, keys 32, values 64)
    (64, 256, 6, 32, 64),  # round 7's training runs of the same layer (they ran)
    (4, 1024, 6, 32, 64),
    (64, 256, 4, 32, 64),
    (4, 1024, 4, 64, 64),  # the default DeltaNet's sizes
    (4, 1024, 4, 32, 32),
    (4, 1024, 4, 64, 32),
]


def main(out):
    rows = []
    for shape in SHAPES:
        p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(shape)], capture_output=True, text=True,
                           timeout=120)
        row = dict(zip("BTHKV", shape), rc=p.returncode)
        if p.returncode == 0:
            row.update(json.loads(p.stdout.strip().splitlines()[-1]))
        else:
            row.update(error=(p.stderr.strip().splitlines() or [""])[-1][:300])
        print(json.dumps(row), flush=True)
        rows.append(row)
    with open(out, "w") as f:
        json.dump(dict(what=__doc__.strip(), torch=__import__("torch").__version__,
                       triton=__import__("triton").__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
