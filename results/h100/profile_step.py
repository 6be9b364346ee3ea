"""Where a config's training step spends the GPU's time: the model as train_runner builds and compiles it
(its config file, then --key=value), a batch of random tokens, forward + backward + AdamW. After
`warmup` steps (compilation), `steps` steps are timed with CUDA events (ms/step, the GPU busy or not)
and one more is profiled: the operators and kernels that took the most GPU time; the table's last line,
"Self CUDA time total", is the step's GPU work.

    python results/h100/profile_step.py config/train_shakespeare_char_delta_product.py --compile_mode=default

A step that keeps the GPU busy has ms/step close to its GPU work; a launch-bound one far above it.
"""
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, ".")
import train_runner as tr  # noqa: E402

paths = [a for a in sys.argv[1:] if not a.startswith("--")]
raw = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
warmup, steps = int(raw.pop("warmup", 15)), int(raw.pop("steps", 20))
cfg = tr.configure(tr.DEFAULTS, paths, raw_overrides=raw)
torch.manual_seed(0)
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
m = tr.build(cfg, 65).cuda()
opt = m.configure_optimizers(cfg["weight_decay"], cfg["learning_rate"], (cfg["beta1"], cfg["beta2"]), "cuda")
fwd = torch.compile(m, mode=None if cfg["compile_mode"] == "default" else cfg["compile_mode"], dynamic=False) \
    if cfg["compile"] else m
B, T = cfg["batch_size"], cfg["block_size"]
X, Y = (torch.randint(0, 65, (B, T), device="cuda") for _ in range(2))


def step():
    if cfg["compile"]:
        torch.compiler.cudagraph_mark_step_begin()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = fwd(X, Y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), cfg["grad_clip"])
    opt.step()
    opt.zero_grad(set_to_none=True)


t = time.perf_counter()
for _ in range(warmup):
    step()
torch.cuda.synchronize()
print(f"{cfg['model_type']} {m.kernel_paths('cuda')}: warm-up {time.perf_counter() - t:.1f} s")
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(steps):
    step()
end.record()
torch.cuda.synchronize()
print(f"ms/step {start.elapsed_time(end) / steps:.2f} (mean of {steps})")
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    step()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=70))
