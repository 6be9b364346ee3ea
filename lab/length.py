"""
Loss against context length (--stage=length): each trained model's validation loss at contexts of
length_factors x its block_size, in the two conventions the literature uses, and by position.

    python train_runner.py --stage=length --out_dir=out-shakespeare-char    # that run's ckpt.pt
    python train_runner.py --stage=length --out_dir=out-bakeoff-cpu         # each model's seeds at its rate
    python train_runner.py config/length.py                                 # position schemes: train, then this

The text is the same for every length: the start of the val split, length_chunks chunks of the longest
context (0: as much of the split as whole chunks of it hold).

    chunks      the text cut into consecutive chunks of L tokens, each target scored once with the context
                of its own chunk: L/2 tokens on average ("nonoverlapping"; Press et al. 2022, ALiBi)
    sliding     windows of L tokens every `stride` tokens (length_stride, 0: block_size), each scoring its
                last `stride` targets, the first window all of them: past the first window every target
                sees at least L - stride tokens ("sliding window"; the ALiBi paper shows the two disagree)
    positions   the loss of the longest context's chunks at positions [0, b), [b, 2b), ... (b = block_size):
                where past its training length a model breaks down

In a job's folder every seed at a model's rate (the bake-off report's) is measured: mean ± std over them.
A model whose positions stop at block_size (learned) has its 1x row and, for longer contexts, the one-line
reason. Each forward is whole windows, as many a batch as keep the logits under data.EVAL_LOGITS: no
family forms more than it does in training.

    <out_dir>/length/length.json, length.md and length.png
"""

from pathlib import Path

import torch
import torch.nn.functional as F

from lab import UserError, data, files, inspection, sweep
from lab.report import fmt, hardware, mean_std, write_record
from lab.settings import split

REFUSED = "learned positions have no row past block_size"


def factors(s):
    found = split(s.length_factors, int)
    if not found or min(found) < 1:
        raise UserError(f"length_factors must be whole multiples of block_size, 1 or more, e.g. 1,2,4; got '{s.length_factors}'")
    return sorted(set(found))


def check(s):
    """The stage's own settings, before a job trains or writes anything for it."""
    if (s.length_stride or s.block_size) > s.block_size:
        raise UserError(f"length_stride {s.length_stride} is longer than block_size {s.block_size}: some targets "
                        "would see too little")
    return factors(s)


def held_out_text(val, longest, chunks):
    """The first `chunks` chunks of `longest` tokens of the val stream (all whole ones for 0), plus the
    target after the last."""
    if isinstance(val, dict):
        raise UserError("--stage=length needs a token stream (Shakespeare, OpenWebText), not a set of sequences (MQAR)")
    whole = (len(val) - 1) // longest
    if whole < 1:
        raise UserError(f"the val split has {len(val)} tokens, fewer than the longest context {longest}: lower length_factors")
    n = min(whole, chunks) if chunks else whole
    return val[:n * longest + 1]


@torch.no_grad()
def window_losses(model, text, L, starts, tokens):
    """Each target's loss [len(starts), L] in the windows text[i : i + L + 1] for i in starts, as many windows
    a forward as hold `tokens` tokens (the training batch's) and keep the logits under data.EVAL_LOGITS."""
    rows = max(1, min(tokens // L, data.EVAL_LOGITS // (L * model.config.vocab_size)))
    losses = []
    for i in range(0, len(starts), rows):
        windows = torch.stack([text[s:s + L + 1] for s in starts[i:i + rows]])
        logits, _ = model(windows[:, :-1])
        losses.append(F.cross_entropy(logits.float().transpose(1, 2), windows[:, 1:], reduction="none").double().cpu())
    return torch.cat(losses)


def measure(model, text, L, stride, tokens):
    """At context L: the mean loss of chunks and of the sliding window, and the chunks' by block_size of positions."""
    n, b = len(text) - 1, model.config.block_size  # n is a whole number of chunks of L
    chunks = window_losses(model, text, L, range(0, n - L + 1, L), tokens)
    sliding = chunks if stride >= L else window_losses(model, text, L, range(0, n - L + 1, stride), tokens)
    scored = torch.cat([sliding[0], sliding[1:, L - stride:].reshape(-1)])  # every target once
    return {"chunks": chunks.mean().item(), "sliding": scored.mean().item(),
            "by_position": chunks.mean(0).view(-1, b).mean(1).tolist()}


def evaluate(run, s):
    """One checkpoint's row: its losses at every factor, or the reason it cannot go past block_size."""
    model, c = run["model"], run["ckpt"]["config"]
    block_size, wanted = model.config.block_size, factors(s)
    stride = min(s.length_stride or block_size, block_size)
    text = held_out_text(run["splits"]["val"], block_size * max(wanted), s.length_chunks)
    row = {"model": c.get("model_type", run["ckpt"]["model_type"]), "pos_emb": model.config.pos_emb,
           "block_size": block_size, "tokens": len(text) - 1, "stride": stride, "lengths": {}}
    for f in wanted:
        L = f * block_size
        if L > block_size and not model.extends:
            row["lengths"][L] = {"refused": REFUSED}
            continue
        row["lengths"][L] = measure(model, text, L, stride, c["batch_size"] * block_size)
        print(f"[length] {run['path']}: {L} tokens: chunks {row['lengths'][L]['chunks']:.4f}, "
              f"sliding {row['lengths'][L]['sliding']:.4f}")
    return row


def checkpoints(s):
    """{name: [checkpoint, ...]}: ckpt_path or <out_dir>/ckpt.pt alone, else each model's seeds at its rate."""
    root = Path(s.out_dir)
    if s.ckpt_path or (root / "ckpt.pt").exists():
        return {name: [path] for name, path in inspection.targets(s).items()}
    found = {name: [path for _, path in inspection.checkpoints_at_best_rate(root, group)]
             for name, group in sweep.report_groups(s).items()}
    found = {name: paths for name, paths in found.items() if paths}
    if not found:
        raise UserError(f"no checkpoint of {s.models} under {root / 'runs'} at these settings: train the job first "
                        "(--stage=length trains what it lacks) or give --ckpt_path")
    return found


def combined(rows):
    """One model's row over its seeds: each length's losses as mean and std, by position as the mean."""
    row = dict(rows[0], seeds=len(rows), lengths={})
    for L, first in rows[0]["lengths"].items():
        if "refused" in first:
            row["lengths"][L] = first
            continue
        every = [r["lengths"][L] for r in rows]
        row["lengths"][L] = {"by_position": [sum(col) / len(col) for col in zip(*(m["by_position"] for m in every))]}
        for key in ("chunks", "sliding"):
            row["lengths"][L][key], row["lengths"][L][f"{key}_std"] = mean_std([m[key] for m in every])
    return row


def run(s):
    """Every model of the job (its seeds), or one checkpoint, at every length -> <out_dir>/length/. Returns the rows."""
    check(s)
    env = files.environment()
    rows = {name: combined([evaluate(inspection.load(path, s), s) for path in paths])
            for name, paths in checkpoints(s).items()}
    root = Path(s.out_dir) / "length"
    record = {"rows": rows, "environment": env, "factors": factors(s), "chunks": s.length_chunks}
    write_record(root, "length", record, markdown(rows, env))
    plot(root, rows)
    return rows


def markdown(rows, env):
    lengths = sorted({L for r in rows.values() for L in r["lengths"]})
    lines = ["# Loss against context length", "", f"{hardware(env)}.", "",
             "Val loss of the same held-out text at each context length L (tokens), in two conventions: chunks of L "
             "(each target with the context of its chunk) / a sliding window of L every `stride` tokens (each target "
             "with at least L - stride). – : " + REFUSED + ".", ""]

    def cell(r, L):
        m = r["lengths"].get(L)
        if m is None or "refused" in m:
            return "" if m is None else "–"
        return " / ".join(fmt(m[k]) + (f" ± {m[k + '_std']:.3f}" if r["seeds"] > 1 else "") for k in ("chunks", "sliding"))
    lines += files.markdown_table(["model", "positions", "trained at", "seeds", *(f"{L:,}" for L in lengths)],
                                  [[name, r["pos_emb"], r["block_size"], r["seeds"], *(cell(r, L) for L in lengths)]
                                   for name, r in rows.items()])
    longest = {name: r["lengths"][max(r["lengths"])] for name, r in rows.items()}
    buckets = max((len(m.get("by_position", [])) for m in longest.values()), default=0)
    if buckets > 1:
        lines += ["", "Loss by position within the longest context (chunks), per block_size of positions:", ""]
        lines += files.markdown_table(["model", *(f"{i}-{i + 1}x" for i in range(buckets))],
                                      [[name, *(fmt(x) for x in m["by_position"])] for name, m in longest.items()
                                       if "by_position" in m])
    return "\n".join(lines) + "\n"


def plot(root, rows):
    plt = files.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in rows.items():
        done = {L: m for L, m in r["lengths"].items() if "refused" not in m}
        for ax, key in zip(axes, ("chunks", "sliding")):
            ax.errorbar(list(done), [m[key] for m in done.values()], yerr=[m.get(f"{key}_std") or 0 for m in done.values()],
                        marker="o", capsize=2, label=name)
    for ax, key in zip(axes, ("chunks", "sliding")):
        ax.set(xlabel="context length (tokens)", ylabel="val loss", title=key)
        ax.set_xscale("log", base=2)
    axes[0].legend(fontsize=7)
    files.save_png(fig, root / "length.png")
