"""
Recall against state size: every model of `models` at each width of mqar_widths, trained at each of
learning_rates on multi-query associative recall (data/mqar; Zoology, Arora et al. 2023), then the table
of each (model, width) at its best rate by val accuracy at the end of training:

    <out_dir>/runs/<model>_d<width>-<identity>/lr<rate>_s<seed>/   metrics.json, losses.csv, eval.csv, ckpt.pt
    <out_dir>/mqar.md, mqar.json    accuracy per (sequence length x kv pairs) slice, and the decoding state's bytes
    <out_dir>/plots/mqar_accuracy.png, mqar_state.png

A row's folder is named by a hash of what makes its runs' results (as the sweep's are, device type
included): a changed setting trains anew beside the old runs. Runs train as the sweep's do (lab/sweep.py:
workers, resume, failures recorded, lr_bracket rounds). `--stage=mqar_report` writes the report alone,
also while the runs are under way: it then says how many are not finished.
"""

import math
from pathlib import Path

import torch

from lab import UserError, data, families, files, sweep, trackers
from lab import settings as configurator
from lab.report import fmt, hardware, made_in, write_record
from lab.settings import split


def state_bytes(model):
    """Bytes of decoding state one sequence holds at the model's full context: the floating-point tensors
    of each layer's cache as allocated (K/V in bf16; linear and delta states are float32 by design), bar
    attributes named with a leading _ (constants a cache keeps for its steps, such as NSA's gather tables)."""
    def walk(x):
        if torch.is_tensor(x):
            return x.numel() * x.element_size() if x.is_floating_point() else 0
        if isinstance(x, (list, tuple)):
            return sum(walk(v) for v in x)
        return sum(walk(v) for k, v in vars(x).items() if not k.startswith("_")) if hasattr(x, "__dict__") else 0
    return walk(model.new_caches(1, torch.device("cpu"), torch.bfloat16))


def plan(s, root=None):
    """({row: settings}, {row: its runs' folder under runs/}) for every model of s.models at each width of
    mqar_widths; a row is named '<model> d<width>'. With root, the folders of that job as it named them."""
    entries, groups, device = {}, {}, sweep.job_device(s.out_dir)
    for name in split(s.models):
        for width in split(s.mqar_widths, int):
            row = f"{name} d{width}"
            entries[row] = configurator.for_model(s, name, n_embd=width)
            groups[row] = sweep.group_folder(entries[row], f"{name}_d{width}", device, root)
    if not entries:
        raise UserError("models or mqar_widths is empty: give --models=vanilla,delta,... and --mqar_widths=64,128,...")
    return entries, groups


def check_data(entries):
    """Each row's data loads, and is whole sequences with targets at the queries (MQAR's), before anything is written."""
    seen = set()
    for entry in entries.values():
        if (data.folder(entry), entry.block_size) in seen:
            continue
        seen.add((data.folder(entry), entry.block_size))
        if not isinstance(data.load(entry, "cpu")["val"], dict):
            raise UserError(f"dataset '{entry.dataset}' is a token stream; recall needs whole sequences with targets at "
                            "the queries: use config/mqar.py (dataset = 'mqar')")


def run_dir(root, group, lr, seed):
    return root / "runs" / group / f"lr{lr:g}_s{seed}"


def run(s, train):
    """Train each model of s.models at each width of mqar_widths and each of learning_rates with
    train(settings, prefix=, group=), then the report (a sweep worker only trains: returns [])."""
    root = Path(s.out_dir)
    trackers.check(s)
    entries, groups = plan(s)
    check_data(entries)
    if s.sweep_worker < 0:
        sweep.write_job(s.replace(stage="mqar"), root)  # what publishing reads

    def runs_at(row, lr):
        return [sweep.make_run(root, entries[row], groups[row], row, lr, entries[row].seed, f"{row}, lr={lr:g}")]

    def best_of(row, rates):
        return best_lr({lr: sweep.read_metrics(run_dir(root, groups[row], lr, entries[row].seed)) for lr in rates})

    sweep.rounds(s, root, list(entries), runs_at, best_of, "mqar", train)
    if s.sweep_worker >= 0:
        return []  # the process that started the workers writes the report
    return report(s)


def tried(root, group, grid, seed):
    """{rate: metrics} of a row: the grid's rates and any other its folder holds (an lr_bracket round's)."""
    rates = {f"{lr:g}": lr for lr in grid}
    for folder in (root / "runs" / group).glob(f"lr*_s{seed}"):
        try:
            rates.setdefault(folder.name[2:].rsplit("_s", 1)[0], float(folder.name[2:].rsplit("_s", 1)[0]))
        except ValueError:  # not a run's folder
            continue
    return {lr: sweep.read_metrics(run_dir(root, group, lr, seed)) for lr in sorted(rates.values())}


def best_lr(runs):
    """The rate of `runs` ({rate: metrics}) with the best val accuracy at the end of training (a run that
    did not finish counts as worst); ties go to the smaller rate."""
    return sweep.best_rate({lr: [m] for lr, m in runs.items()}, lambda m: m.get("val_accuracy", -math.inf))


def summary(entry, runs):
    """A row of the table: the best of the rates done, and how many of the rates tried are finished."""
    done = {lr: m for lr, m in runs.items() if m.get("status") == "done"}
    best = best_lr(done) if done else None
    m = done.get(best, {})
    with torch.device("meta"):  # the cache's size does not depend on the vocabulary: no data needed here
        model = families.build(entry.model_type, entry.model_args(), 64)
    return {"model": entry.model_type, "width": entry.n_embd, "learning_rate": best,
            "best_lr_at_edge": len(done) > 1 and best in (min(done), max(done)),
            "params": m.get("params"), "state_bytes": state_bytes(model),
            "rates_done": sum(t.get("status") in sweep.FINISHED for t in runs.values()), "rates": len(runs),
            "accuracy": m.get("val_accuracy_by_slice"), "kernel_path": m.get("kernel_path"),
            "lr_sweep": {f"{lr:g}": t.get("val_accuracy", t.get("status")) for lr, t in runs.items()},
            # runs whose accuracy fell after their best evaluation: the table counts the last
            "fell": {f"{lr:g}": (t["best_val_accuracy"], t["val_accuracy"]) for lr, t in done.items()
                     if t.get("best_val_accuracy", 0) - t.get("val_accuracy", 0) > 0.1}}


def report(s):
    """<out_dir>/mqar.md, mqar.json and plots/mqar_*.png: each (model, width) at its best rate among the
    finished runs of the grid and of any lr_bracket round. Returns the table's rows."""
    root, grid = Path(s.out_dir), split(s.learning_rates, float)
    entries, groups = plan(s, root)
    rows, envs = [], []
    for row, entry in entries.items():
        runs = tried(root, groups[row], grid, entry.seed)
        envs += [m["environment"] for m in runs.values() if m.get("status") == "done" and m.get("environment")]
        rows.append(dict(summary(entry, runs), model=row.rsplit(" d", 1)[0]))  # the entry as named, options and all
    if not any(r["accuracy"] for r in rows):
        raise UserError(f"no MQAR run at these settings (the device type among them) under {root}/runs has finished: "
                        "run --stage=mqar first; each run's metrics.json and error.log say why it stopped")
    env = made_in(envs) if envs else files.environment()  # the runs' own, not this process's
    slices = [k for k in next(r["accuracy"] for r in rows if r["accuracy"]) if k != "all"]  # then in_dist, len<L>
    record = {"rows": rows, "environment": env, "config": configurator.flat(s)}
    write_record(root, "mqar", record, markdown(root, rows, slices, env))
    plot(root, rows, slices)
    return rows


def markdown(root, rows, slices, env):
    unfinished = sum(r["rates"] - r["rates_done"] for r in rows)
    lines = [f"# MQAR recall: {root}", "", f"{hardware(env)}.", "",
             "Accuracy at the query positions of the val set, per (sequence length x kv pairs); in-dist over the "
             "slices no longer than the training sequences, len L over the test slices of length L past them, kept "
             "apart; state = bytes of decoding state per sequence at the full context. Made by "
             "`python train_runner.py config/mqar.py --stage=mqar`.", ""]
    if unfinished:
        lines += [f"**Partial:** {unfinished} of {sum(r['rates'] for r in rows)} runs are not finished; each row's best is "
                  "the best of the rates done.", ""]
    lines += files.markdown_table(
        ["model", "width", "params", "state bytes", "best LR", "rates done", *map(column, slices), "all"],
        ([r["model"], r["width"], fmt(r["params"], ","), f"{r['state_bytes']:,}",
          fmt(r["learning_rate"], ".3g") + (" (edge)" if r["best_lr_at_edge"] else ""), f"{r['rates_done']}/{r['rates']}",
          *(fmt(r["accuracy"] and r["accuracy"].get(k), ".3f") for k in [*slices, "all"])] for r in rows))
    if any(r["best_lr_at_edge"] for r in rows):
        lines += ["", "(edge): the best of the learning rates done is the lowest or highest of them, so the row's own "
                  "best may lie beyond the grid."]
    fell = [f"{r['model']} d{r['width']} at {lr}: {peak:.3f} at its best evaluation, {last:.3f} at the last"
            for r in rows for lr, (peak, last) in r["fell"].items()]
    if fell:
        lines += ["", "Runs whose accuracy fell by more than 0.1 after their best evaluation (the table counts the last): "
                  + "; ".join(fell) + "."]
    return "\n".join(lines) + "\n"


def column(key):
    return {"in_dist": "in-dist"}.get(key, key.replace("len", "len ") if key.startswith("len") else key)


def plot(root, rows, keys):
    """Accuracy against width, one panel per slice; accuracy over all slices against the decoding state's
    bytes; accuracy against test length (in-distribution at the longest training length), a line a row."""
    plt = files.pyplot()
    models = list(dict.fromkeys(r["model"] for r in rows if r["accuracy"]))  # a model with no finished run has no line
    slices = [k for k in keys if "x" in k]
    lengths = [k for k in keys if k.startswith("len")]
    if lengths:
        trained = max(int(k.split("x")[0]) for k in slices if int(k.split("x")[0]) < int(lengths[0][3:]))
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in rows:
            if r["accuracy"] and "in_dist" in r["accuracy"]:
                ax.plot([trained, *(int(k[3:]) for k in lengths)], [r["accuracy"][k] for k in ("in_dist", *lengths)],
                        marker="o", label=f"{r['model']} d{r['width']}")
        ax.axvline(trained, color="grey", lw=0.8, ls=":")
        ax.set(xlabel="test sequence length (tokens; the first point: in-distribution)", ylabel="MQAR accuracy",
               xscale="log", ylim=(0, 1.02))
        ax.legend(fontsize=6, ncol=2)
        files.save_png(fig, root / "plots" / "mqar_length.png")
    fig, axes = plt.subplots(1, len(slices), figsize=(3.4 * len(slices), 3.2), squeeze=False)
    for ax, k in zip(axes[0], slices):
        for name in models:
            pts = [(r["width"], r["accuracy"][k]) for r in rows if r["model"] == name and r["accuracy"] and k in r["accuracy"]]
            ax.plot(*zip(*pts), marker="o", label=name)
        ax.set(title=f"seq x kv pairs = {k}", xlabel="model width", ylabel="accuracy", xscale="log", ylim=(0, 1.02))
    axes[0][0].legend(fontsize=7)
    files.save_png(fig, root / "plots" / "mqar_accuracy.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in models:
        pts = [(r["state_bytes"], r["accuracy"]["all"]) for r in rows if r["model"] == name and r["accuracy"]]
        ax.plot(*zip(*pts), marker="o", label=name)
    ax.set(xlabel="decoding state per sequence (bytes)", ylabel="MQAR accuracy (all slices)", xscale="log", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    files.save_png(fig, root / "plots" / "mqar_state.png")
