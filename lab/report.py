"""
The bake-off's report, from what a job's folder holds: each model's runs (lab/sweep.py), the parameter
matching and the benchmarks' rows (lab/bench.py), into

    <out_dir>/bakeoff.md    the table (each model at its best learning rate) and one table per benchmark
    <out_dir>/bakeoff.json  the same figures, the environment and the parameter matching
    <out_dir>/plots/*.png   loss curves, best val loss, perplexity against FLOPs and wall-clock, the learning
                            rates, decoding latency and memory against length

The top of bakeoff.md names the hardware and the commit(s) its rows were made at. A model's best rate is
chosen on the mean over all seeds among the rates that have them all (the finalists seeds_at_best trained
more seeds at), or, while one rate alone has them, on the seeds every rate has; it is reported over all
of its seeds. A missing benchmark file is a missing table, not an error.
"""

import math
import re
from pathlib import Path

from lab import UserError, files, sweep, trackers

BENCHMARKS = ("bench_decode", "bench_memory")  # the report's: decoding latency, a training step's time and memory
BENCH_TABLES = (("ms_per_token", "Decoding, ms/token at batch 1, by context length", ".3f"),
                ("step_ms", "One training step (fwd+bwd+AdamW), ms, by sequence length", ".1f"),
                ("peak_mib", "Peak memory of that step, MiB, by sequence length", ".0f"))


def mean_std(values):
    """(mean, sample standard deviation) of the values that are not None; (None, None) of none."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0


def fmt(x, spec=".4f"):
    return "–" if x is None else format(x, spec)


def shared(m):
    """' (GPU shared by N)' for a run (or a model's runs) that shared its GPU with other sweep workers: its
    speed is its share of the GPU; '' otherwise."""
    return f" (GPU shared by {m['gpu_share']})" if m.get("gpu_share", 1) > 1 else ""


def made_in(envs, commits=()):
    """The environment a report's rows were made in (the first run's), not the report's own, with every
    commit among them and `commits` (a job made in parts may span several), abbreviated as git does:
    git_commit joins them, commits lists them."""
    names = {e.get("git_commit") for e in envs} | set(commits)
    names = sorted({re.sub("^([0-9a-f]{7})[0-9a-f]{33}", r"\1", c) for c in names if c})
    return dict(envs[0] if envs else {}, git_commit=", ".join(names), commits=names)


def write_record(root, name, record, text):
    """<root>/<name>.json (the record) and <name>.md (its text), each written whole, and the text printed."""
    files.write_json(root / f"{name}.json", record)
    files.write_text(root / f"{name}.md", text)
    print(text)


def hardware(env):
    """The line atop a report: the hardware, the software and the commit(s) its rows come from."""
    commits = env.get("commits") or [c for c in [env.get("git_commit")] if c]
    made = (f"commit {commits[0]}" if len(commits) == 1 else "commit unknown" if not commits else
            f"commits {', '.join(commits)}: its rows come from {len(commits)} commits (each run's metrics.json "
            "and each benchmark row names its own)")
    return (f"Hardware: {env.get('gpu') or 'CPU (' + str(env.get('cpu_threads')) + ' threads)'}; torch {env.get('torch')}, "
            f"triton {env.get('triton', '–')}; made at {made}")


def read_benches(root):
    """{stage: {"rows": [...], "environment": {...}}} of the benchmark files under <root>/bench; a missing
    or unreadable file, or a row without its model and length, is left out."""
    benches = {}
    for stage in BENCHMARKS:
        try:
            found = files.read_json(root / "bench" / f"{stage}.json")
        except (OSError, ValueError) as e:
            print(f"[report] {root / 'bench' / stage}.json left out: {e}")
            continue
        if isinstance(found, dict):
            rows = [r for r in found.get("rows") or [] if isinstance(r, dict) and "model" in r and "T" in r]
            benches[stage] = {"rows": rows, "environment": found.get("environment") or {}}
    return benches


def by_length(benches, stage, key, name):
    """{T: value, or the row's status such as 'OOM'} of one model in a benchmark."""
    return {str(r["T"]): r.get(key, r.get("status")) for r in benches.get(stage, {}).get("rows", []) if r["model"] == name}


def summary(name, by_lr, params, benches):
    """One model's row: its best rate (on the mean over every seed among the rates that have them all, else
    on the seeds every rate has), then that rate's figures over all its seeds."""
    best_lr, on_common = sweep.chosen_rate(by_lr), sweep.on_common_seeds(by_lr)
    if not any(m.get("status") == "done" for m in by_lr[best_lr]):
        best_lr = None  # no rate has a finished run
    runs = sorted(by_lr.get(best_lr, []), key=lambda m: m["config"]["seed"])
    every = [m for ms in by_lr.values() for m in ms]
    first = (runs or every)[0]["config"]
    best, best_sd = mean_std([m.get("best_val_loss") for m in runs])
    final, final_sd = mean_std([m.get("final_val_loss") for m in runs])
    return {
        "params": params if params is not None else runs[0].get("params") if runs else None, "best_lr": best_lr,
        # the best at an end of the learning rates tried is not known to be the model's best: said in the table
        "best_lr_at_edge": len(by_lr) > 1 and best_lr in (min(by_lr), max(by_lr)),
        "best_val_loss": best, "best_val_loss_std": best_sd, "final_val_loss": final, "final_val_loss_std": final_sd,
        "val_perplexity": math.exp(best) if best is not None else None, "seeds": len(runs),
        "tokens_per_sec": mean_std([m.get("tokens_per_sec") for m in runs])[0],
        "mfu": mean_std([m.get("mfu") for m in runs])[0],
        "gpu_share": max((m.get("gpu_share", 1) for m in runs), default=1),
        "kernel_path": sorted({p for m in every for p in m.get("kernel_path") or []}),
        "status": {k: sum(str(m.get("status")) == k for m in every) for k in sorted({str(m.get("status")) for m in every})},
        "lr_sweep": {str(lr): mean_std([m.get("best_val_loss") for m in on_common[lr]])[0] for lr in sorted(by_lr)},
        "positions": "per layer" if first.get("layers") else first.get("pos_emb"), "dropout": first.get("dropout"),
        "ms_per_token": by_length(benches, "bench_decode", "ms_per_token", name),
        "peak_mib": by_length(benches, "bench_memory", "peak_mib", name),
        "step_ms": by_length(benches, "bench_memory", "ms", name),
    }


def write(s):
    """<out_dir>/bakeoff.md, bakeoff.json and plots/*.png for the models of s.models; returns {model: its row}."""
    root = Path(s.out_dir)
    trackers.check(s)
    found = {name: sweep.model_runs(root, group) for name, group in sweep.report_groups(s).items()}
    by_model = {name: by_lr for name, by_lr in found.items() if by_lr}
    if not by_model:
        raise UserError(f"no runs of {s.models} under {root}/runs at these settings: run the sweep first (--stage=sweep)")
    for name in found.keys() - by_model.keys():
        print(f"[report] {name} has no runs at these settings under {root}/runs: left out")
    matching = files.read_json(root / "param_matching.json", {})
    params = {r["model"]: r["params"] for r in matching.get("rows", [])}
    benches = read_benches(root)
    models = {name: summary(name, by_lr, params.get(name), benches) for name, by_lr in by_model.items()}
    named = set(models)
    runs = [m for by_lr in by_model.values() for ms in by_lr.values() for m in ms]
    env = made_in([m["environment"] for m in runs if m.get("environment")],
                  [r.get("commit") or b["environment"].get("git_commit") for b in benches.values() for r in b["rows"]
                   if r["model"] in named])
    files.write_json(root / "bakeoff.json", {"models": models, "environment": env, "param_matching": matching})
    text = markdown(root, models, env)
    files.write_text(root / "bakeoff.md", text)
    plot_curves(root, {name: best_run(by_model[name], m["best_lr"]) for name, m in models.items()})
    plot_models(root, models)
    plot_benches(root, {stage: [r for r in b["rows"] if r["model"] in named] for stage, b in benches.items()})
    tracker = trackers.Tracker(s, f"bakeoff-{root.name}", {"task": "lm", "stage": "report"}, group=root.name)
    tracker.text("bakeoff", text)
    tracker.artifacts([root / "bakeoff.md", root / "bakeoff.json", *sorted((root / "plots").glob("*.png"))])
    tracker.finish()
    print(text)
    return models


def best_run(by_lr, lr):
    """The first seed's run at the best rate, where it has curves to plot."""
    runs = sorted(by_lr.get(lr, []), key=lambda m: m["config"]["seed"])
    return runs[0] if runs and runs[0].get("curves", {}).get("val") else None


def markdown(root, models, env):
    lines = [f"# Bake-off: {root}", "", f"{hardware(env)}.", "",
             "Made by `python train_runner.py` (stage bakeoff); each run's config is in runs/*/*/metrics.json. No "
             "model drops attention weights; dropout (of the embeddings, residual and MLP outputs) is each model's "
             "setting. Positions: a hybrid's are its layers' own (config/models/).", ""]
    lines += files.markdown_table(
        ["model", "positions", "dropout", "params", "best LR", "best val (± std)", "final val", "ppl", "seeds", "tokens/s",
         "MFU", "kernels", "runs"],
        ([name, m["positions"] or "–", fmt(m["dropout"], "g"), fmt(m["params"], ","),
          fmt(m["best_lr"], ".3g") + (" (edge)" if m["best_lr_at_edge"] else ""),
          fmt(m["best_val_loss"]) + (f" ± {m['best_val_loss_std']:.4f}" if m["seeds"] > 1 else ""),
          fmt(m["final_val_loss"]), fmt(m["val_perplexity"], ".2f"), m["seeds"], fmt(m["tokens_per_sec"], ",.0f") + shared(m),
          fmt(m["mfu"] and 100 * m["mfu"], ".1f") + ("%" if m["mfu"] else ""), ", ".join(m["kernel_path"]),
          ", ".join(f"{v} {k}" for k, v in m["status"].items())] for name, m in models.items()))
    if any(m["best_lr_at_edge"] for m in models.values()):
        lines += ["", "(edge): the best of the learning rates tried is the lowest or highest of them, so the model's "
                  "own best may lie beyond; `lr_bracket` extends the grid there."]
    for key, title, spec in BENCH_TABLES:
        lens = sorted({int(t) for m in models.values() for t in m[key]})
        if not lens:
            continue
        if key == "peak_mib" and not any(isinstance(v, float) for m in models.values() for v in m[key].values()):
            lines += ["", "Peak memory is measured on CUDA only (torch has no allocator statistics for the CPU)."]
            continue
        cells = {name: [m[key].get(str(t)) for t in lens] for name, m in models.items() if m[key]}
        lines += ["", f"## {title}", "", *files.markdown_table(
            ["model", *(f"{t:,}" for t in lens)],
            ([name, *(c if isinstance(c, str) else fmt(c, spec) for c in row)] for name, row in cells.items()))]
    length_md = root / "length" / "length.md"
    if length_md.exists():  # --stage=length's table, as the bake-off runs it last (its own header left out)
        body = length_md.read_text().split("\n\n", 2)[2]
        lines += ["", "## Loss against context length (length/length.md, length/length.png)", "", body.rstrip()]
    return "\n".join(lines) + "\n"


def plot_curves(root, best_runs):
    """Loss curves, and val perplexity against training FLOPs and wall-clock, of each model's best rate."""
    plt = files.pyplot()
    best_runs = {name: m for name, m in best_runs.items() if m}
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, m in best_runs.items():
        a.plot([r[0] for r in m["curves"]["train"]], [r[1] for r in m["curves"]["train"]], label=name)
        b.plot([r[0] for r in m["curves"]["val"]], [r[2] for r in m["curves"]["val"]], label=name)
    for ax, title in ((a, "train loss"), (b, "val loss")):
        ax.set(xlabel="iteration", title=f"{title} (best LR, first seed)")
        ax.legend(fontsize=8)
    files.save_png(fig, root / "plots" / "loss_curves.png")
    for png, xkey, xlabel in (("ppl_vs_flops.png", "flops", "training FLOPs"),
                              ("ppl_vs_wallclock.png", "seconds", "wall-clock seconds")):
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, m in best_runs.items():
            rows = [r for r in m["curves"]["val"] if r[0] > 0 and (xkey == "flops" or len(r) > 3)]
            xs = [r[0] * m["flops_per_iter"] if xkey == "flops" else r[3] for r in rows]
            ax.plot(xs, [math.exp(r[2]) for r in rows], marker=".", label=name + (shared(m) if xkey == "seconds" else ""))
        ax.set(xlabel=xlabel, ylabel="val perplexity", xscale="log" if xkey == "flops" else "linear")
        ax.legend(fontsize=8)
        files.save_png(fig, root / "plots" / png)


def plot_models(root, models):
    """Each model's best val loss (± std over seeds), and best val loss against the learning rate."""
    plt = files.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    names = [n for n in models if models[n]["best_val_loss"] is not None]
    best = [models[n]["best_val_loss"] for n in names]
    ax.bar(names, best, yerr=[models[n]["best_val_loss_std"] for n in names], capsize=4)
    ax.set(ylabel="best val loss (mean ± std over seeds)", ylim=(min(best or [0]) * 0.95, None))
    ax.tick_params(axis="x", rotation=30)
    files.save_png(fig, root / "plots" / "final_val_loss.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, m in models.items():
        pts = sorted((float(lr), v) for lr, v in m["lr_sweep"].items() if v is not None)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=name)
    ax.set(xlabel="learning rate", ylabel="best val loss", xscale="log")
    ax.legend(fontsize=8)
    files.save_png(fig, root / "plots" / "lr_sweep.png")


def plot_benches(root, benches):
    """Decoding latency against context, and a training step's peak memory against length (CUDA only)."""
    plt = files.pyplot()
    for stage, key, png, ylabel in (("bench_decode", "ms_per_token", "latency_vs_context.png", "ms/token (batch 1)"),
                                    ("bench_memory", "peak_mib", "memory_vs_T.png", "peak MiB, one training step")):
        rows = benches.get(stage, [])
        if not any(key in r for r in rows):
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for name in dict.fromkeys(r["model"] for r in rows):
            pts = sorted((r["T"], r[key]) for r in rows if r["model"] == name and key in r)
            if not pts:
                continue
            ax.plot(*zip(*pts), marker="o", label=name)
            ooms = [r["T"] for r in rows if r["model"] == name and r.get("status") == "OOM"]
            if ooms:  # where the model ran out of memory: a red cross at its highest point
                ax.scatter(ooms, [max(p[1] for p in pts)] * len(ooms), marker="x", color="red")
        xlabel = "context / sequence length"
        tokens = sorted({r["batch"] * r["T"] for r in rows if "batch" in r})
        if len(tokens) > 1:  # past tokens_per_batch the batch stays 1, so a step carries more tokens there
            xlabel += f" ({tokens[0]:,} tokens per step; up to {tokens[-1]:,} where the batch is 1)"
        ax.set(xlabel=xlabel, ylabel=ylabel, xscale="log", yscale="log" if key == "peak_mib" else "linear")
        ax.legend(fontsize=8)
        files.save_png(fig, root / "plots" / png)
