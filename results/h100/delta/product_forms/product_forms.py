"""Gated DeltaProduct's PyTorch form in the baby GPT: which chunk size, and loop or scan over the chunks,
trains fastest under CUDA graphs, and compiles fastest? All forms compute the same function (tests/test_delta.py).

    python results/h100/delta/product_forms/product_forms.py 64:16 64:2 128:16 128:2 /tmp/old@64:16

Each [DIR@]CHUNK:SCAN_FROM (config keys chunk_size and scan_from; the bake-off's is 64:16; DIR: another
copy of the code, e.g. an older commit's) runs in a process of its own, all at once. Each compiles the
training step (forward, backward, AdamW; compile_mode reduce-overhead, as train_runner) and the evaluation
forward, timing both, then waits for the others; the steps are then timed one process at a time (CUDA
events, 50 steps after 10), so nothing else is on the GPU. On the CPU (no CUDA): the baby GPT's sizes (the
config's CPU profile is smaller), batch 2, compile_mode default, for the compile times only.
"""
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, ".")
import train_runner as tr  # noqa: E402


def one(form, n_forms, rendezvous):
    chunk, scan = form.split("@")[-1].split(":")
    cuda = torch.cuda.is_available()
    baby = {} if cuda else dict(n_layer=6, n_head=4, n_embd=384, block_size=256, head_k_dim=64, head_v_dim=48, dropout=0.2)
    cfg = tr.configure(tr.DEFAULTS, ["config/train_shakespeare_char_delta_product.py"],
                       overrides=dict(baby, chunk_size=int(chunk), scan_from=int(scan), device="cuda" if cuda else "cpu"))
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    m = tr.build(cfg, 65).to(cfg["device"])
    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cuda" if cuda else "cpu")
    mode = "reduce-overhead" if cuda else None
    fwd = torch.compile(m, mode=mode, dynamic=False)
    B, T = (cfg["batch_size"], cfg["block_size"]) if cuda else (2, cfg["block_size"])
    X, Y = (torch.randint(0, 65, (B, T), device=cfg["device"]) for _ in range(2))
    autocast = torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda)

    def step():
        torch.compiler.cudagraph_mark_step_begin()
        with autocast:
            _, loss = fwd(X, Y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t = time.perf_counter()
    step().item()
    compile_train = time.perf_counter() - t
    m.eval()
    t = time.perf_counter()
    with torch.no_grad(), autocast:
        torch.compiler.cudagraph_mark_step_begin()
        fwd(X, Y)[1].item()
    compile_eval = time.perf_counter() - t
    m.train()
    print(f"{form}: kernels {m.kernel_paths(cfg['device'])}, compiled the training step in {compile_train:.1f} s "
          f"and the evaluation forward in {compile_eval:.1f} s", flush=True)
    if not cuda:
        return
    (rendezvous / f"ready.{len(list(rendezvous.glob('ready.*')))}.{os.getpid()}").touch()
    while len(list(rendezvous.glob("ready.*"))) < n_forms:
        time.sleep(0.5)
    with open(rendezvous / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one form on the GPU at a time
        for _ in range(10):
            step()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(50):
            step()
        end.record()
        torch.cuda.synchronize()
        print(f"{form}: {start.elapsed_time(end) / 50:.2f} ms/step (mean of 50, alone on the GPU), "
              f"peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--one":
        one(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
    else:
        forms, rendezvous = sys.argv[1:], Path(os.environ.get("TMPDIR", "/tmp")) / f"product_forms_{os.getpid()}"
        rendezvous.mkdir()
        procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--one", f, str(len(forms)), str(rendezvous)],
                                  cwd=f.split("@")[0] if "@" in f else None) for f in forms]
        sys.exit(max(p.wait() for p in procs))
