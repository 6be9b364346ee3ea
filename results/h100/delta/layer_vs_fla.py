"""Our DeltaNet layer against flash-linear-attention's own (fla.layers.DeltaNet), same GPU, same harness:
    python results/h100/delta/layer_vs_fla.py OUT_DIR [T,T,...]
Forward + backward of one layer at hidden 384, 16,384 tokens per batch (B = 16384 // T; B = 1 at 65,536),
bf16 autocast over float32 weights and a float32 input, as `--stage=bench_layer` times it. Rows:
ours eager (bench_layer's figure), ours under torch.compile (as training runs it), FLA's layer with our
head layout (6 heads of 64) and with its default (4 heads of 96). Profiles of one step at the longest T
go beside the JSON. Needs CUDA and flash-linear-attention."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import train_runner as tr  # noqa: E402

out = Path(sys.argv[1])
lens = [int(t) for t in (sys.argv[2] if len(sys.argv) > 2 else "256,1024,4096,16384,65536").split(",")]
out.mkdir(parents=True, exist_ok=True)
cfg = tr.configure(tr.DEFAULTS, [], raw_overrides=dict(models="delta", device="cuda"))
(_, settings), = tr.bench_specs(cfg)
autocast = torch.autocast("cuda", dtype=torch.bfloat16)


def ours(T, compiled):
    attn = tr.build_for(settings, T, n_layer=1).cuda().transformer.h[0].attn
    fn = torch.compile(attn) if compiled else attn
    return lambda x: fn(x, torch.arange(x.shape[1], device="cuda"))[0]


def fla_layer(heads):
    from fla.layers import DeltaNet
    layer = DeltaNet(hidden_size=settings["n_embd"], num_heads=heads).cuda()
    return lambda x: layer(x)[0]


variants = {"ours eager": lambda T: ours(T, False), "ours compiled": lambda T: ours(T, True),
            "fla 6x64": lambda T: fla_layer(6), "fla 4x96": lambda T: fla_layer(4)}
rows = []
for T in lens:
    for name, make in variants.items():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        B = max(1, cfg["tokens_per_batch"] // T)
        x = torch.randn(B, T, settings["n_embd"], device="cuda", requires_grad=True)
        layer = make(T)

        def step():
            with autocast:
                y = layer(x)
            y.float().sum().backward()

        row = {"variant": name, "T": T, "batch": B, "ms": tr.timed_median(step, "cuda", 10),
               "peak_mib": torch.cuda.max_memory_allocated() / 2**20}
        if T == max(lens):
            tr.write_profile(step, out / f"profile_{name.replace(' ', '_')}_{T}.txt", "cuda")
        rows.append(row)
        print(json.dumps(row), flush=True)
        tr.write_json(out / "layer_vs_fla.json", {"rows": rows, "environment": tr.environment()})
