"""Where flash-linear-attention 0.6.0's delta rule faults, each case in its own process (an illegal memory
access ends a process's CUDA context):
  python results/h100/delta/fla_faults.py shapes OUT_JSON
      FLA's own chunk_delta_rule (its public entry point, random bf16 inputs, forward and backward) at the
      head sizes our DeltaNet runs: is the fault of test_delta's GPU test of DeltaNet with an output gate
      (keys 32, values 64) FLA's at that shape, or ours?
  python results/h100/delta/fla_faults.py warps OUT_JSON
      that test's model (n_head 4, n_embd 256, T 1024, batch 4), FLA's path against the PyTorch form, with
      FLA's autotuned kernels held to one num_warps at a time (and as shipped), under CUDA_LAUNCH_BLOCKING
      so that the faulting kernel is the one named. FLA holds prepare_wy_repr_bwd_kernel to num_warps=2 on
      Hopper for a miscompilation behind illegal memory accesses (fla-org/flash-linear-attention#984, #988).
(Until 2026-11-24 these were fla_shapes.py and hopper_warps.py; the warps case now steps past model_delta's
refusal of unequal widths, which came after it ran.)
"""
import json
import os
import subprocess
import sys
import tempfile

SHAPES_CHILD = r"""
import sys, json, torch
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

WARPS_CHILD = r"""
import sys, json, torch, triton
sys.path.insert(0, ".")
from model_delta import GPT, GPTConfig
import fla.ops.delta_rule.chunk, fla.modules.norm.l2norm  # noqa: F401 (their kernels, to restrict)
warps = json.loads(sys.argv[1])
held = []
for name, mod in list(sys.modules.items()):
    if not name.startswith("fla."):
        continue
    for attr, obj in vars(mod).items():
        if isinstance(obj, triton.runtime.autotuner.Autotuner) and warps is not None:
            kept = [c for c in obj.configs if c.num_warps == warps]
            if kept:
                obj.configs = kept
                held.append(f"{name}.{attr}")
torch.manual_seed(0)
m = GPT(GPTConfig(block_size=1024, vocab_size=65, n_layer=2, n_head=4, n_embd=256, variant="deltanet",
                  use_gate=True, head_k_dim=32, head_v_dim=64, use_fla=True)).cuda()
for block in m.transformer.h:  # past model_delta's refusal of this shape on Hopper with Triton < 3.7.1
    block.attn.kernel_path = lambda device_type: "fla" if m.config.use_fla else "pytorch"
idx = torch.randint(0, 65, (4, 1024), device="cuda")
outs = []
for fast in (True, False):
    m.config.use_fla = fast
    m.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, loss = m(idx, idx)
    loss.backward()
    torch.cuda.synchronize()
    outs.append((logits.float(), m.transformer.h[0].attn.c_attn.weight.grad.clone()))
err = [((a - b).norm() / b.norm()).item() for a, b in zip(*outs)]
print(json.dumps(dict(held=len(held), rel_err_logits=err[0], rel_err_grad=err[1])))
"""

SHAPES = [  # B, T, H, K, V
    (4, 1024, 4, 32, 64),  # the GPU test's (n_head 4, n_embd 256, keys 32, values 64)
    (64, 256, 6, 32, 64),  # round 7's training runs of the same layer
    (4, 1024, 6, 32, 64),
    (64, 256, 4, 32, 64),
    (4, 1024, 4, 64, 64),  # the default DeltaNet's sizes
    (4, 1024, 4, 32, 32),
    (4, 1024, 4, 64, 32),
]


def in_own_process(child, arg, env=None, timeout=120):
    """The child's last stdout line as a dict, or its return code and its error."""
    p = subprocess.run([sys.executable, "-c", child, json.dumps(arg)], capture_output=True, text=True,
                       env=env, timeout=timeout)
    if p.returncode == 0:
        return dict(rc=0, **json.loads(p.stdout.strip().splitlines()[-1]))
    lines = p.stderr.strip().splitlines() or [""]
    frames = [ln.strip() for ln in lines if "/fla/" in ln and ", in " in ln]  # the innermost FLA frame
    errors = [ln for ln in lines if "Error" in ln] or lines
    return dict(rc=p.returncode, fla_frame=frames[-1] if frames else None, error=errors[-1][:300])


def main(what, out):
    rows = []
    if what == "shapes":
        cases = [(dict(zip("BTHKV", shape)), shape, None) for shape in SHAPES]
    else:
        cases = [(dict(num_warps=w or "as shipped"), w,
                  dict(os.environ, CUDA_LAUNCH_BLOCKING="1", TRITON_CACHE_DIR=tempfile.mkdtemp()))  # tune afresh
                 for w in (None, 2, 4, 8)]
    for row, arg, env in cases:
        row.update(in_own_process(SHAPES_CHILD if what == "shapes" else WARPS_CHILD, arg, env,
                                  120 if what == "shapes" else 240))
        print(json.dumps(row), flush=True)
        rows.append(row)
    with open(out, "w") as f:
        json.dump(dict(what=__doc__.strip(), torch=__import__("torch").__version__,
                       triton=__import__("triton").__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
