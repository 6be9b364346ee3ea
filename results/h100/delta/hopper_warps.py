"""DeltaNet with its output gate at keys 32 and values 64 (n_head 4, n_embd 256, T 1024, batch 4: the GPU
test's shape) on flash-linear-attention 0.6.0's kernels, against the PyTorch form, with FLA's autotuned
delta-rule kernels held to one num_warps at a time (and as shipped), each in its own process: an illegal
memory access ends a process's CUDA context. CUDA_LAUNCH_BLOCKING names the kernel that faults.
  python results/h100/delta/hopper_warps.py OUT_JSON
FLA restricts prepare_wy_repr_bwd_kernel to num_warps=2 on Hopper for the miscompilation behind its
illegal memory accesses (fla-org/flash-linear-attention#984, #988); the other delta-rule kernels keep 2, 4, 8.
"""
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
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
                  use_gate=True, head_k_dim=32, head_v_dim=64)).cuda()
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


def main(out):
    rows = []
    for warps in (None, 2, 4, 8):
        env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1", TRITON_CACHE_DIR=tempfile.mkdtemp())  # tune afresh
        p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(warps)], capture_output=True, text=True,
                           env=env, timeout=240)
        row = dict(num_warps=warps or "as shipped", rc=p.returncode)
        if p.returncode == 0:
            row.update(json.loads(p.stdout.strip().splitlines()[-1]))
        else:  # the innermost FLA frame and the error's line
            frames = [ln.strip() for ln in p.stderr.splitlines() if "/fla/" in ln and ", in " in ln]
            row.update(fla_frame=frames[-1] if frames else None, error=p.stderr.strip().splitlines()[-1][:300])
        print(json.dumps(row), flush=True)
        rows.append(row)
    with open(out, "w") as f:
        json.dump(dict(what=__doc__.strip(), torch=__import__("torch").__version__,
                       triton=__import__("triton").__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
