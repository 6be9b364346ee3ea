"""
Where a hybrid's softmax layers belong: `placement_mixer` layers placed among the layers of each family of
`placement_bases` (lab/hybrid.py's entries, options included), every placement beside the two pure models,
each parameter-matched to vanilla, trained on the configured task at each of learning_rates and seeds:

    <out_dir>/runs/<row>-<identity>/lr<rate>_s<seed>/   as the sweep's runs (lab/sweep.py)
    <out_dir>/placement.md, placement.json              each row at its best rate (mean over seeds): mean ± std
    <out_dir>/plots/placement.png                       the metric against placement, the pure models as lines

`placements` lists them ('0,5,2+5': the mixer at layer 0; at 5; at 2 and 5), or, left empty, one mixer layer
first, in the middle and last, and two first, in the middle, last and spread (each closing half of the stack). The metric is the
best val loss on a text and the val accuracy at the end of training on recall (MQAR).
`--stage=placement_report` writes the report alone, also while runs are under way.
"""

import re
from pathlib import Path

from lab import UserError, data, files, sweep, trackers
from lab import settings as configurator
from lab.hybrid import parse_entry
from lab.report import fmt, hardware, made_in, mean_std, write_record
from lab.settings import split

# one letter a layer in the table's `layers` column, and what it stands for
CODES = {"vanilla": ("S", "softmax"), "rope": ("S", "softmax"), "sparse": ("W", "sliding window"), "delta": ("D", "DeltaNet"),
         "gated_delta": ("G", "Gated DeltaNet"), "delta_product": ("P", "Gated DeltaProduct"), "nsa": ("N", "NSA"),
         "linear": ("L", "linear"), "based": ("B", "Based")}


def code(name):
    return CODES.get(name, (name[:1].upper(), name))


def default_placements(n):
    """One mixer layer first, in the middle, last; two first, in the middle, last, and spread (each closing half of
    the stack, as hybrids that put a softmax layer after every few recurrent ones do)."""
    singles = [(0,), (n // 2 - 1,), (n - 1,)]
    pairs = [(0, 1), (n // 2 - 1, n // 2), (n - 2, n - 1), (n // 2 - 1, n - 1)]
    return list(dict.fromkeys(singles + pairs))


def placements_of(s):
    """The placements as tuples of layer indices, checked against n_layer."""
    if not s.placements.strip():
        return default_placements(s.n_layer)
    chosen = []
    for item in split(s.placements):
        try:
            spot = tuple(sorted({int(i) for i in item.split("+")}))
        except ValueError:
            raise UserError(f"placements: '{item}' is not layer numbers joined by '+' (e.g. placements=0,5,2+5)") from None
        if not all(0 <= i < s.n_layer for i in spot):
            raise UserError(f"placements: '{item}' names a layer outside 0..{s.n_layer - 1} (n_layer={s.n_layer})")
        chosen.append(spot)
    return chosen


def name_of(entry_text):
    return parse_entry(entry_text)[0]


def plan(s):
    """{row: (its layers, the mixer's positions or None for a pure model, its base family)} in the table's order."""
    mixer, L = s.placement_mixer, s.n_layer
    if not split(s.placement_bases):
        raise UserError("placement_bases names no family: e.g. --placement_bases=delta,gated_delta")
    rows = {}
    for base in split(s.placement_bases):
        rows[name_of(base)] = ([base] * L, None, name_of(base))
        for spot in placements_of(s):
            rows[f"{name_of(base)} + {name_of(mixer)} at {'+'.join(map(str, spot))}"] = (
                [mixer if i in spot else base for i in range(L)], spot, name_of(base))
    rows[name_of(mixer)] = ([mixer] * L, None, name_of(mixer))
    return rows


def folder_label(row):
    return re.sub(r"[^a-z0-9]+", "_", row.lower()).strip("_")


def entries_of(s):
    """({row: settings, parameter-matched}, {row: its runs' folder}, the matching table, the target). Every
    row is configured, so checked, before the data is prepared."""
    rows = {row: configurator.for_model(s, "hybrid", layers=",".join(layers)) for row, (layers, _, _) in plan(s).items()}
    base = configurator.for_model(s, "vanilla")
    vocab = data.vocab_size(base)  # prepared now if it is not yet
    target = s.target_params or sweep.count_params(base, vocab)
    entries, groups, table, device = {}, {}, [], sweep.job_device(s.out_dir)
    for row, entry in rows.items():
        change, n = sweep.match_params(entry, target, vocab)
        entries[row] = entry.replace(**change)
        groups[row] = sweep.group_folder(entries[row], folder_label(row), device)
        table.append({"model": row, "model_type": "hybrid", "n_layer": entry.n_layer, "n_head": entries[row].n_head,
                      "n_embd": entries[row].n_embd, "params": n, "off_target_pct": 100 * (n / target - 1),
                      "changed": change})
    return entries, groups, table, target


def report_groups(s):
    """{row: its runs' folder} from the settings and the job's param_matching.json alone (no data needed)."""
    root = Path(s.out_dir)
    changes = {r["model"]: r["changed"] for r in files.read_json(root / "param_matching.json", {"rows": []})["rows"]}
    device = sweep.job_device(root)
    return {row: sweep.group_folder(configurator.for_model(s, "hybrid", layers=",".join(layers), **changes.get(row, {})),
                                    folder_label(row), device, root) for row, (layers, _, _) in plan(s).items()}


def score(m):
    """Higher is better: recall where the run measured it, else minus the best val loss."""
    return m["val_accuracy"] if "val_accuracy" in m else -m["best_val_loss"]


def run(s, train):
    """Train every row at each rate and seed with train(settings, prefix=, group=), then the report."""
    root = Path(s.out_dir)
    trackers.check(s)
    entries, groups, table, target = entries_of(s)
    for entry in {(data.folder(e), e.block_size): e for e in entries.values()}.values():
        data.load(entry, "cpu")  # the data fits, before anything is written
    seeds = split(s.seeds, int)
    if s.sweep_worker < 0:
        sweep.write_job(s, root)
        lines = sweep.write_matching(root, target, table)
        print(f"[placement] parameter matching, target {target:,}:\n" + "\n".join(lines))

    def runs_at(row, lr):
        return [sweep.make_run(root, entries[row], groups[row], row, lr, seed, f"{row} lr={lr:g} seed={seed}")
                for seed in seeds]

    def best_of(row, rates):
        return sweep.best_rate({lr: [sweep.read_metrics(root / "runs" / groups[row] / f"lr{lr:g}_s{seed}")
                                     for seed in seeds] for lr in rates}, score)

    sweep.rounds(s, root, list(entries), runs_at, best_of, "placement", train)
    return [] if s.sweep_worker >= 0 else report(s)


def rates_in(root, group, grid):
    """The rates a row's folder holds runs of (an lr_bracket round's among them), with the grid's."""
    rates = set(grid)
    for folder in (root / "runs" / group).glob("lr*_s*"):
        try:
            rates.add(float(folder.name[2:].rsplit("_s", 1)[0]))
        except ValueError:  # not a run's folder
            continue
    return sorted(rates)


def summary(root, row, plan_row, group, grid, seeds):
    """A row of the table: its best rate by the mean over seeds of the runs done there, and that rate's seeds."""
    layers, spot, base = plan_row
    by_rate = {lr: [sweep.read_metrics(root / "runs" / group / f"lr{lr:g}_s{seed}") for seed in seeds]
               for lr in rates_in(root, group, grid)}
    done = {lr: [m for m in ms if m.get("status") == "done"] for lr, ms in by_rate.items()}
    done = {lr: ms for lr, ms in done.items() if ms}
    best = sweep.best_rate(done, score) if done else None
    runs = done.get(best, [])
    values = [score(m) if "val_accuracy" in m else m["best_val_loss"] for m in runs]
    mean, std = mean_std(values)
    return {"row": row, "base": base, "layers": [name_of(x) for x in layers], "mixer_at": list(spot) if spot else None,
            "params": runs[0].get("params") if runs else None, "learning_rate": best, "mean": mean, "std": std,
            "values": values, "seeds_done": len(runs), "recall": any("val_accuracy" in m for m in runs),
            "runs_done": sum(m.get("status") in sweep.FINISHED for ms in by_rate.values() for m in ms),
            "runs": sum(len(ms) for ms in by_rate.values()), "environments": [m["environment"] for m in runs
                                                                               if m.get("environment")]}


def report(s):
    """<out_dir>/placement.md, placement.json and plots/placement.png from the finished runs. Returns the rows."""
    root, grid, seeds = Path(s.out_dir), split(s.learning_rates, float), split(s.seeds, int)
    groups = report_groups(s)
    rows = [summary(root, row, plan_row, groups[row], grid, seeds) for row, plan_row in plan(s).items()]
    if not any(r["seeds_done"] for r in rows):
        raise UserError(f"no placement run at these settings under {root}/runs has finished: run --stage=placement first")
    env = made_in([e for r in rows for e in r.pop("environments")])
    record = {"rows": rows, "environment": env, "config": configurator.flat(s)}
    write_record(root, "placement", record, markdown(s, root, rows, env))
    plot(s, root, rows)
    return rows


def markdown(s, root, rows, env):
    recall = any(r["recall"] for r in rows)
    metric = "val accuracy (end of training)" if recall else "best val loss"
    lines = [f"# Where the softmax layers go: {root}", "", f"{hardware(env)}.", "",
             f"{s.n_layer}-layer hybrids on {s.dataset}: the {name_of(s.placement_mixer)} layers at the positions named "
             f"(0 = next to the input), the other layers of the base family; every row parameter-matched to vanilla "
             f"and trained at the same settings. {metric.capitalize()}: mean ± std over the seeds at the row's best "
             f"learning rate (chosen on that mean). Layers, from the input up: "
             + ", ".join(sorted({" ".join(code(n)) for r in rows for n in r["layers"]})) + ".", ""]
    unfinished = sum(r["runs"] - r["runs_done"] for r in rows)
    if unfinished:
        lines += [f"**Partial:** {unfinished} of {sum(r['runs'] for r in rows)} runs are not finished.", ""]
    lines += files.markdown_table(
        ["row", "layers", "params", "best LR", metric, "seeds", "per seed"],
        ([r["row"], " ".join(code(n)[0] for n in r["layers"]), fmt(r["params"], ","),
          fmt(r["learning_rate"], ".3g"), fmt(r["mean"]) + (f" ± {fmt(r['std'])}" if r["seeds_done"] > 1 else ""), r["seeds_done"],
          ", ".join(f"{v:.4f}" for v in r["values"])] for r in rows))
    return "\n".join(lines) + "\n"


def plot(s, root, rows):
    """One panel per base family: the metric (error bars: std over seeds) at each placement, its pure
    model dashed and the pure mixer dotted."""
    plt = files.pyplot()
    bases = [name_of(b) for b in split(s.placement_bases)]
    pure = {r["row"]: r for r in rows if r["mixer_at"] is None}
    fig, axes = plt.subplots(1, len(bases), figsize=(5.5 * len(bases), 3.8), squeeze=False, sharey=True)
    for ax, base in zip(axes[0], bases):
        mine = [r for r in rows if r["mixer_at"] and r["base"] == base]
        for count in sorted({len(r["mixer_at"]) for r in mine}):
            pts = [(i, r) for i, r in enumerate(mine) if len(r["mixer_at"]) == count and r["mean"] is not None]
            if pts:
                ax.errorbar([i for i, _ in pts], [r["mean"] for _, r in pts], yerr=[r["std"] for _, r in pts],
                            marker="o", capsize=3, linestyle="none", label=f"{count} {name_of(s.placement_mixer)} layer(s)")
        for name, style in ((base, "--"), (name_of(s.placement_mixer), ":")):
            if name in pure and pure[name]["mean"] is not None:
                ax.axhline(pure[name]["mean"], linestyle=style, color="gray", label=f"{name} alone")
        ax.set_xticks(range(len(mine)), ["+".join(map(str, r["mixer_at"])) for r in mine])
        ax.set(title=f"{base} with {name_of(s.placement_mixer)} layers", xlabel="mixer layer position(s)",
               ylabel="val accuracy" if any(r["recall"] for r in rows) else "best val loss")
        ax.legend(fontsize=7)
    files.save_png(fig, root / "plots" / "placement.png")
