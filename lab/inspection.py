"""
Looking inside a trained model: a checkpoint's loss (--stage=eval) and its attention (--stage=inspect).

The checkpoints: ckpt_path, else <out_dir>/ckpt.pt, else the best run of each model of `models` in the job
folder out_dir (its sweep's best learning rate, and the best seed there that kept a checkpoint). Each is
evaluated on its own run's data unless the command names another --dataset. Everything goes under out_dir:

    <out_dir>/eval/<name>_<dataset>.json   val and train loss, evaluated as the run's training evaluated
    <out_dir>/inspect/inspect.json         per model: map kinds, entropy, distance, local ratio, head ablation
    <out_dir>/inspect/head_ablation.md     the val loss increase when each head (or a layer) is zeroed
    <out_dir>/inspect/*.png                attention_patterns (mean over heads), attention_patterns_<name> (every
                                           head), attention_entropy, attention_distance, head_ablation, attention_masks

Maps are of three kinds (map_kind): distributions (softmax, normalised linear attention), gated weights
(NSA: rows sum to their gates) and signed mixing matrices (the delta rule). Entropy and distance are
defined for the first two (gated rows normalised), not for signed maps.
"""

import contextlib
import math
import textwrap
from pathlib import Path

import torch

from lab import UserError, checkpoint, data, files, sweep
from lab.settings import split

# -----------------------------------------------------------------------------
# statistics of attention maps [..., T, T]


def map_kind(att, tol=1e-3):
    """'distribution' (each row sums to 1), 'weights' (non-negative, other sums: NSA's gated sum of three
    distributions) or 'signed' (the delta rule's implied map, a mixing matrix with negative entries)."""
    if att.min() < -tol:
        return "signed"
    return "distribution" if (att.sum(-1) - 1).abs().max() <= tol else "weights"


def as_distribution(att):
    """Non-negative rows scaled to sum to 1 (a row of no weight stays 0): where a layer reads."""
    total = att.sum(-1, keepdim=True)
    return torch.where(total > 0, att / total.clamp_min(1e-12), att)


def attention_entropy(att):
    """[..., T, T] rows that are distributions -> mean entropy per row, in nats, over the rows: [...]."""
    p = att.clamp_min(0)
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean(-1)


def attention_distance(att):
    """Mean distance i - j under each row's weights, averaged over rows: [...]."""
    i = torch.arange(att.shape[-1], device=att.device)
    return (att * (i[:, None] - i[None, :]).clamp_min(0)).sum(-1).mean(-1)


def local_ratio(att, window):
    """Share of each row's weight on the last `window` positions (itself included), averaged over rows."""
    i = torch.arange(att.shape[-1], device=att.device)
    near = ((i[:, None] - i[None, :]) < window) & (i[None, :] <= i[:, None])
    return (att * near).sum(-1).mean(-1)


class ablated:
    """with ablated(model, layer, head): that head's output is zero (head=None: the layer's whole attention)."""

    def __init__(self, model, layer, head=None):
        self.attn, self.head, self.n_head = model.transformer.h[layer].attn, head, model.config.n_head

    def _zero_head(self, module, args):  # c_proj's input is the heads side by side: [B, T, H·Dv]
        x = args[0].unflatten(-1, (self.n_head, -1)).clone()
        x[..., self.head, :] = 0
        return (x.flatten(-2),)

    def __enter__(self):
        if self.head is None:
            self.hook = self.attn.register_forward_hook(lambda m, a, out: (torch.zeros_like(out[0]), out[1]))
        else:
            self.hook = self.attn.c_proj.register_forward_pre_hook(self._zero_head)
        return self

    def __exit__(self, *exc):
        self.hook.remove()


# -----------------------------------------------------------------------------
# which checkpoints, loaded with their data


def checkpoints_at_best_rate(root, group):
    """[(best val loss, checkpoint)] of a model's runs at its rate in the job folder (the report's,
    sweep.chosen_rate), each seed that kept one, best first."""
    by_rate = sweep.model_runs(root, group)
    if not by_rate:
        return []
    lr = sweep.chosen_rate(by_rate)
    kept = [(m["best_val_loss"], root / "runs" / group / f"lr{lr:g}_s{m['config']['seed']}" / "ckpt.pt")
            for m in by_rate[lr] if m.get("best_val_loss") is not None]
    return sorted((loss, path) for loss, path in kept if path.exists())


def best_checkpoint(root, group):
    """The checkpoint of a model's best run in the job folder: at its rate, the seed with the lowest val loss
    that kept a checkpoint; None where it has none."""
    kept = checkpoints_at_best_rate(root, group)
    return kept[0][1] if kept else None


def targets(s):
    """{name: checkpoint path}: ckpt_path, else <out_dir>/ckpt.pt, else each model's best run in out_dir."""
    if s.ckpt_path:
        return {Path(s.ckpt_path).resolve().parent.name: Path(s.ckpt_path)}
    root = Path(s.out_dir)
    if (root / "ckpt.pt").exists():
        return {root.resolve().name: root / "ckpt.pt"}
    found = {name: best_checkpoint(root, group) for name, group in sweep.report_groups(s).items()}
    found = {name: path for name, path in found.items() if path is not None}
    if not found:
        raise UserError(f"nothing to look at: no --ckpt_path, no {root / 'ckpt.pt'}, and no checkpoint of "
                        f"{', '.join(split(s.models))} under {root / 'runs'} with these settings (give the job's own config)")
    return found


def data_settings(s, ckpt):
    """Settings that load the data as the run saw it: its dataset, profile (how it was prepared) and data folder
    (where this machine has it), bar any of those this command names (e.g. --dataset=another)."""
    c, (_, overrides, raw) = ckpt["config"], s.sources
    recorded = c.get("data_dir", "")
    run = {"dataset": c["dataset"], "profile": c.get("profile", s.profile),
           "data_dir": recorded if not recorded or Path(recorded).is_dir() else s.data_dir}
    named = {k for k, _ in (*overrides, *raw)}
    return s.replace(**{k: v for k, v in run.items() if k not in named})


def load(path, s):
    """A checkpoint with what looking at it takes: {path, ckpt, model (eval mode, on s.device), splits (train and
    val on s.device), encode (its tokenizer), dataset}."""
    ckpt = checkpoint.read(path)
    model = checkpoint.model_from(ckpt, path).to(s.device).eval()
    ds = data_settings(s, ckpt)
    meta = data.load_meta(data.prepare(ds))
    if meta["vocab_size"] != model.config.vocab_size:
        raise UserError(f"dataset '{ds.dataset}' has {meta['vocab_size']} tokens but {path} was trained on "
                        f"{model.config.vocab_size}")
    return {"path": Path(path), "ckpt": ckpt, "model": model, "splits": data.load(ds, s.device, model.config.block_size),
            "encode": data.codec(meta)[0], "dataset": ds.dataset}


def val_loss(run, s, iters, which=("train", "val")):
    """Mean loss over `iters` batches of each split, drawn as the run's evaluation drew them (its batch
    size, context and batch seed); float32, as a checkpoint is stored."""
    c, model = run["ckpt"]["config"], run["model"]
    return data.evaluate(model, run["splits"], c["batch_size"], c["block_size"], iters, c["seed"] + 1,
                         contextlib.nullcontext(), splits=which, group=s.eval_group, vocab_size=model.config.vocab_size,
                         windows=c.get("eval_windows", 0))


# -----------------------------------------------------------------------------
# --stage=eval


def evaluate_checkpoint(s):
    """Val (and train) loss of each checkpoint with the evaluation its training used: same batch size,
    context, number of batches and batch seed. Writes <out_dir>/eval/<name>_<dataset>.json; returns {name: result}."""
    env = files.environment()  # before this writes anything: its own files would mark the checkout dirty
    results = {}
    for name, path in targets(s).items():
        run = load(path, s)
        ckpt = run["ckpt"]
        losses = val_loss(run, s, ckpt["config"]["eval_iters"])
        results[name] = {"checkpoint": str(path), "model_type": ckpt["model_type"], "iter": ckpt["iter_num"],
                         "dataset": run["dataset"], "val_loss": losses["val"], "train_loss": losses["train"],
                         "val_perplexity": math.exp(losses["val"]), "best_val_loss_at_training": ckpt["best_val_loss"],
                         "environment": env}
    for name, r in results.items():
        files.write_json(Path(s.out_dir) / "eval" / f"{name}_{r['dataset']}.json", r)
        print(f"{r['checkpoint']}: {r['model_type']} at iter {r['iter']}, {r['dataset']}: val loss {r['val_loss']:.4f} "
              f"(ppl {r['val_perplexity']:.2f}), train loss {r['train_loss']:.4f}")
    return results


# -----------------------------------------------------------------------------
# --stage=inspect: gather every model's maps and ablation first, then write


def attention_maps(model, ids, device):
    """Per layer the attention map of `ids`, [H, T, T] on the CPU (None where a layer has none), and its kind."""
    with torch.no_grad():
        _, _, maps = model(torch.tensor([ids], device=device), return_attn=True)
    maps = [None if a is None else a[0].float().cpu() for a in maps]
    return maps, [None if a is None else map_kind(a) for a in maps]


def head_ablation(model, loss):
    """(val loss, [L, H + 1] its increase when each head is zeroed; last column: the layer's whole attention)."""
    base = loss()
    L, H = model.config.n_layer, model.config.n_head
    increase = torch.zeros(L, H + 1)
    for layer in range(L):
        for head in [*range(H), None]:
            with ablated(model, layer, head):
                increase[layer, H if head is None else head] = loss() - base
    return base, increase


def look(s, name, run):
    """One checkpoint's maps, their kinds, statistics and head ablation: {maps, kinds, increase, summary}."""
    model, ckpt = run["model"], run["ckpt"]
    maps, kinds = attention_maps(model, run["encode"](s.text)[: model.config.block_size], s.device)
    # where a layer reads (entropy, distance) is defined for non-negative maps, not for signed ones
    reads = [as_distribution(a) if k in ("distribution", "weights") else None for a, k in zip(maps, kinds)]
    base, increase = head_ablation(model, lambda: val_loss(run, s, s.ablation_iters, ("val",))["val"])
    H = model.config.n_head
    summary = {
        "checkpoint": str(run["path"]), "model_type": ckpt["model_type"], "val_loss": base, "map_kinds": kinds,
        "entropy": [attention_entropy(a).tolist() if a is not None else None for a in reads],
        "distance": [attention_distance(a).mean().item() if a is not None else None for a in reads],
        "local_ratio": [local_ratio(a, s.local_window).mean().item() if a is not None else None for a in reads],
        "ablation_val_loss_increase": {"per_head": increase[:, :H].tolist(), "whole_layer": increase[:, H].tolist()},
    }
    top = int(increase[:, :H].argmax())
    print(f"[inspect] {name}: val loss {base:.4f}; the head that matters most: layer {top // H}, "
          f"head {top % H} (+{increase[:, :H].max():.4f} without it)")
    return {"maps": maps, "kinds": kinds, "increase": increase, "summary": summary}


def inspect(s):
    """Attention maps, entropy, distance and head ablation of each checkpoint (targets), as PNGs, JSON and a
    markdown table in <out_dir>/inspect/. Returns {name: summary}."""
    env = files.environment()  # before this writes anything: its own files would mark the checkout dirty
    if not s.text:
        raise UserError("--text is empty: give some text to look at")
    runs = {name: load(path, s) for name, path in targets(s).items()}
    for run in runs.values():
        run["encode"](s.text)  # text a model never saw stops here, before any model runs
    found = {name: look(s, name, run) for name, run in runs.items()}
    folder = Path(s.out_dir) / "inspect"
    plt = files.pyplot()
    plot_maps(plt, folder, found)
    plot_statistics(plt, folder, found, s.local_window)
    plot_ablation(plt, folder, found)
    plot_masks(plt, folder)
    write_record(folder, s, found, env)
    return {name: f["summary"] for name, f in found.items()}


# -----------------------------------------------------------------------------
# inspect's plots and record

NOTES = {"distribution": "", "weights": "\n(gated: rows sum to the gates)", "signed": "\n(signed mixing, not a distribution)"}


def no_map(ax, why):
    ax.text(0.5, 0.5, textwrap.fill(why, 28), ha="center", va="center", fontsize=7)
    ax.set_axis_off()


def show(ax, a, kind):
    """A map on a sequential scale; a signed one on a diverging scale centred on 0."""
    if kind == "signed":
        m = a.abs().max().item() or 1.0
        ax.imshow(a, cmap="RdBu_r", vmin=-m, vmax=m)
    else:
        ax.imshow(a, cmap="viridis")


def plot_maps(plt, folder, found):
    """attention_patterns.png: each model's layers, mean over heads; attention_patterns_<name>.png: every head."""
    L = max(len(f["maps"]) for f in found.values())
    fig, axes = plt.subplots(len(found), L, figsize=(2.2 * L, 2.3 * len(found)), squeeze=False)
    for row, (name, f) in zip(axes, found.items()):
        for layer, ax in enumerate(row):
            if layer >= len(f["maps"]) or f["maps"][layer] is None:
                no_map(ax, "no attention map")
                continue
            show(ax, f["maps"][layer].mean(0), f["kinds"][layer])
            ax.set_title(f"{name} L{layer}" + NOTES[f["kinds"][layer]], fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    files.save_png(fig, folder / "attention_patterns.png")
    for name, f in found.items():
        H = max(a.shape[0] for a in f["maps"] if a is not None)
        fig, axes = plt.subplots(len(f["maps"]), H, figsize=(1.6 * H, 1.6 * len(f["maps"])), squeeze=False)
        for layer, (a, kind) in enumerate(zip(f["maps"], f["kinds"])):
            for h, ax in enumerate(axes[layer]):
                if a is None:
                    no_map(ax, "no map")
                    continue
                show(ax, a[h], kind)
                ax.set_title(f"L{layer} H{h}", fontsize=6)
                ax.set_axis_off()
        files.save_png(fig, folder / f"attention_patterns_{name}.png")


def plot_statistics(plt, folder, found, window):
    """attention_entropy.png (layer x head, per model) and attention_distance.png (distance, local share per layer)."""
    fig, axes = plt.subplots(1, len(found), figsize=(3.2 * len(found), 3), squeeze=False)
    for ax, (name, f) in zip(axes[0], found.items()):
        entropy = f["summary"]["entropy"]
        if any(e is None for e in entropy):
            no_map(ax, f"{name}: its maps are signed (the delta rule's implied map is a mixing matrix), so "
                       "attention entropy is not defined")
            continue
        im = ax.imshow(torch.tensor(entropy), cmap="magma")
        gated = "weights" in f["kinds"]
        ax.set(title=f"{name}: entropy (nats{', rows normalised' if gated else ''})", xlabel="head", ylabel="layer")
        fig.colorbar(im, ax=ax, fraction=0.046)
    files.save_png(fig, folder / "attention_entropy.png")

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, f in found.items():
        if all(d is not None for d in f["summary"]["distance"]):
            a.plot(f["summary"]["distance"], marker="o", label=name)
            b.plot(f["summary"]["local_ratio"], marker="o", label=name)
    a.set(xlabel="layer", ylabel="mean attention distance (tokens)")
    b.set(xlabel="layer", ylabel=f"weight within the last {window} tokens")
    for ax in (a, b):
        ax.legend(fontsize=8)
    fig.suptitle("signed maps (the delta rule) are left out; gated ones (NSA) count with rows normalised", fontsize=8)
    files.save_png(fig, folder / "attention_distance.png")


def plot_ablation(plt, folder, found):
    fig, axes = plt.subplots(1, len(found), figsize=(3.4 * len(found), 3), squeeze=False)
    for ax, (name, f) in zip(axes[0], found.items()):
        im = ax.imshow(f["increase"], cmap="Reds")
        ax.set(title=f"{name}: val loss increase", xlabel="head (last column: whole layer)", ylabel="layer")
        fig.colorbar(im, ax=ax, fraction=0.046)
    files.save_png(fig, folder / "head_ablation.png")


def plot_masks(plt, folder, T=48, w=8):
    """attention_masks.png: the fixed sparse patterns, drawn from the predicates the models use, and NSA's
    reads for one draw of random queries and keys (they depend on content)."""
    import model_nsa
    import model_sparse
    masks = {"causal (softmax)": torch.ones(T, T, dtype=torch.bool).tril(),
             f"sliding_window {w}": model_sparse.sliding_window_mask(T, w),
             f"local_global {w}+4": model_sparse.local_global_mask(T, w, 4),
             "strided 8": model_sparse.strided_mask(T, 8), "fixed 8, c=2": model_sparse.fixed_mask(T, 8, 2)}
    nsa = model_nsa.GPTConfig(n_embd=64, n_head=4, n_kv_head=1, cmp_block=8, cmp_stride=8, select_block=8,
                              select_count=3, window_size=w)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 4, T, 16, generator=gen), torch.randn(1, 1, T, 16, generator=gen)
    masks[f"NSA: 3 blocks of 8 + window {w}\n(random q, k)"] = model_nsa.full_resolution_keys(q, k, nsa)[0, 0]
    fig, axes = plt.subplots(1, len(masks), figsize=(2.6 * len(masks), 3.1))
    for ax, (title, mask) in zip(axes, masks.items()):
        ax.imshow(mask, cmap="Greys")
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    files.save_png(fig, folder / "attention_masks.png")


def write_record(folder, s, found, env):
    """inspect.json (every model's summary) and head_ablation.md (one table per model)."""
    files.write_json(folder / "inspect.json", {"text": s.text, "models": {n: f["summary"] for n, f in found.items()},
                                               "environment": env})
    lines = [f"# Head ablation: val loss increase when one head (or a layer's whole attention) is zeroed, "
             f"over {s.ablation_iters} val batches", ""]
    for name, f in found.items():
        H = f["increase"].shape[1] - 1
        lines += [f"## {name} (val loss {f['summary']['val_loss']:.4f})", "",
                  *files.markdown_table(["layer", *(f"head {h}" for h in range(H)), "whole layer"],
                                        ([layer, *(f"{v:+.4f}" for v in row.tolist())]
                                         for layer, row in enumerate(f["increase"]))), ""]
    files.write_text(folder / "head_ablation.md", "\n".join(lines))
