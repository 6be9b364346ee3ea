"""Tables and the loss-curve plot of results/h200x2 from its run folders: python results/h200x2/summarize.py"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
from train_runner import markdown_table, pyplot, save_png  # noqa: E402


def metrics(folder):
    return json.loads((HERE / folder / "metrics.json").read_text())


def row(name, m):
    best_iter = min(m["curves"]["val"], key=lambda r: r[2])[0]
    return [name, f"{m['best_val_loss']:.4f} (iter {best_iter})", f"{m['ms_per_iter']:.2f}", f"{m['tokens_per_sec']:,.0f}",
            f"{m['peak_memory_mib']:.0f}", ", ".join(m["kernel_path"]), f"{m['wall_time_s']:.0f}"]


header = ["run", "best val loss", "ms/iter", "tokens/s", "peak MiB (per GPU)", "kernels", "run s"]
one, two = metrics("ddp/one_gpu"), metrics("ddp/two_gpus")
lines = ["## DDP: the baby GPT, global batch 2 × 64 × 256 tokens, 3000 iterations", "",
         *markdown_table(header, [row("1 GPU, 2 micro-steps", one), row("2 GPUs (DDP), 1 micro-step each", two)]),
         "", f"Throughput ratio 2 GPUs / 1 GPU: {two['tokens_per_sec'] / one['tokens_per_sec']:.2f}×.", "",
         "Val loss at each evaluation:", "",
         *markdown_table(["iter", *(str(r[0]) for r in one["curves"]["val"])],
                         [["1 GPU", *(f"{r[2]:.4f}" for r in one["curves"]["val"])],
                          ["2 GPUs", *(f"{r[2]:.4f}" for r in two["curves"]["val"])]]),
         "", "## Every family under DDP on 2 GPUs: 100 iterations, uncompiled", "",
         *markdown_table(header, [row(f, metrics(f"ddp/family_{f}")) for f in
                                  ("linear", "sparse", "delta", "gated_delta", "delta_product", "nsa")])]
sweeps = []
for name in ("one_gpu", "two_gpus_same_start", "two_gpus"):
    runs = sorted((json.loads(p.read_text()) for p in (HERE / "sweep" / name).glob("runs/*/metrics.json")),
                  key=lambda m: m["config"]["out_dir"])
    sweeps.append([name, *(f"{m['best_val_loss']:.4f} / {m['wall_time_s']:.0f} s" for m in runs)])
names = [Path(m).name for m in sorted(str(p.parent) for p in (HERE / "sweep" / "one_gpu").glob("runs/*/metrics.json"))]
lines += ["", "## The sweep on 1 and 2 GPUs: best val loss / run seconds (compile included)", "",
          *markdown_table(["sweep", *names], sweeps)]

# the bake-off's own sweep protocol (config/bakeoff.py: 3 runs per GPU, up to 2 bracketing rounds) on 1 and 2 GPUs
walls = dict(line.split(" rc=0 wall_s=") for line in (HERE / "sweep_bracketed" / "walls.txt").read_text().split("\n") if line)
bracketed = []
for name in ("one_gpu", "two_gpus"):
    runs = [json.loads(p.read_text()) for p in (HERE / "sweep_bracketed" / name).glob("runs/*/metrics.json")]
    wall = float(walls[f"sweep_{name}"])
    tried = {m: sorted({r["config"]["learning_rate"] for r in runs if r["config"]["model_type"] == m})
             for m in ("vanilla", "sparse")}
    lrs = "; ".join(f"{m}: {', '.join(map(str, v))}" for m, v in tried.items())
    bracketed.append([name, str(len(runs)), f"{wall:.1f}", f"{wall / len(runs):.1f}", lrs])
lines += ["", "## The bracketed sweep (vanilla, sparse; 2 seeds; 3000 iterations) on 1 and 2 GPUs", "",
          *markdown_table(["sweep", "runs", "wall s", "wall s per run", "learning rates tried"], bracketed),
          "", f"Wall per run, 2 GPUs / 1 GPU: {float(bracketed[1][3]) / float(bracketed[0][3]):.2f}."]
(HERE / "summary.md").write_text("\n".join(lines) + "\n")

plt = pyplot()
fig, ax = plt.subplots(figsize=(6, 4))
for label, m in (("1 GPU", one), ("2 GPUs, DDP", two)):
    ax.plot([r[0] for r in m["curves"]["val"]], [r[2] for r in m["curves"]["val"]], marker="o", label=f"{label}: val")
    ax.plot([r[0] for r in m["curves"]["val"]], [r[1] for r in m["curves"]["val"]], ls="--", label=f"{label}: train")
ax.set(xlabel="iteration", ylabel="loss", title="baby GPT, the same global batch, 2 H200s", ylim=(0.5, 2.5))
ax.legend()
save_png(fig, HERE / "ddp_loss_curves.png")
print("\n".join(lines))
