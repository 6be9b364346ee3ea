"""
Datasets: prepared on first use, held on the device whole, batched there, evaluated exactly.

A dataset is a folder under `data_dir` (default: data/ in this checkout) holding meta.pkl (its
vocabulary) and either a token stream per split (train.bin / val.bin, uint16) or whole sequences
(train.npz / val.npz with inputs, targets (-1 where the loss ignores a position), seq_len and kv_pairs,
e.g. MQAR). A dataset that is not prepared yet is made by data/<name>/prepare.py (TinyShakespeare is
downloaded); offline, one line names the manual step.
"""

import importlib.util
import inspect
import math
import pickle
from pathlib import Path

import numpy as np
import torch

from lab import UserError

SCRIPTS = Path(__file__).resolve().parent.parent / "data"  # each dataset's prepare.py
EVAL_LOGITS = 2**27  # logits of one evaluation forward, at most: 0.5 GB in float32


def folder(s):
    """The folder of the settings' dataset."""
    return (Path(s.data_dir) if s.data_dir else SCRIPTS) / s.dataset


def is_prepared(path):
    return (path / "meta.pkl").exists() and any((path / f"train.{ext}").exists() for ext in ("bin", "npz"))


def prepare(s):
    """The dataset's folder, made first by its prepare.py where it is not prepared yet, or where the script
    has a current(meta) that says the folder was prepared by an earlier form of it."""
    path = folder(s)
    script = SCRIPTS / s.dataset / "prepare.py"
    module = load_script(script) if script.is_file() else None
    if not is_prepared(path) or not getattr(module, "current", lambda meta: True)(load_meta(path)):
        if module is None:
            known = sorted(p.name for p in SCRIPTS.iterdir() if (p / "prepare.py").is_file())
            raise UserError(f"dataset '{s.dataset}' is not prepared in {path} and has no data/{s.dataset}/prepare.py; "
                            f"choose one of {', '.join(known)}")
        kwargs = {"profile": s.profile} if "profile" in inspect.signature(module.prepare).parameters else {}
        print(f"preparing {path} (python data/{s.dataset}/prepare.py)")
        path.mkdir(parents=True, exist_ok=True)
        try:
            module.prepare(out_dir=path, **kwargs)
        except SystemExit as e:  # the script's own one-line error: what to do by hand
            raise UserError(str(e.code).removeprefix("error: ")) from None
    meta = load_meta(path)
    if meta.get("profile", s.profile) != s.profile:
        raise UserError(f"{path} was prepared for the {meta['profile']} profile, these settings are {s.profile}'s: "
                        f"run `python data/{s.dataset}/prepare.py --profile={s.profile}`")
    return path


def load_script(script):
    spec = importlib.util.spec_from_file_location(f"prepare_{script.parent.name}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _MetaUnpickler(pickle.Unpickler):
    def find_class(self, module, name):  # meta.pkl holds dicts, strings and ints: nothing to import
        raise pickle.UnpicklingError(f"meta.pkl refers to {module}.{name}")


def load_meta(path):
    with open(Path(path) / "meta.pkl", "rb") as f:
        return _MetaUnpickler(f).load()


def vocab_size(s):
    """The prepared dataset's vocabulary (prepared now if it is not yet)."""
    return load_meta(prepare(s))["vocab_size"]


def load(s, device, block_size=None):
    """The train and val splits on the device: a token stream each, or a dict of whole sequences."""
    path, block_size = prepare(s), block_size or s.block_size
    if (path / "train.npz").exists():
        return {split: load_sequences(path / f"{split}.npz", block_size, device) for split in ("train", "val")}
    splits = {}
    for split in ("train", "val"):
        tokens = np.fromfile(path / f"{split}.bin", dtype=np.uint16)
        if len(tokens) <= block_size + 1:
            raise UserError(f"block_size {block_size} is too long for {path / split}.bin ({len(tokens)} tokens): "
                            "lower --block_size")
        splits[split] = torch.from_numpy(tokens.astype(np.int64)).to(device)
    return splits


def load_sequences(path, block_size, device):
    with np.load(path) as f:
        data = {k: torch.from_numpy(f[k].astype(np.int64)).to(device) for k in ("inputs", "targets", "seq_len", "kv_pairs")}
    if data["inputs"].shape[1] > block_size:
        raise UserError(f"{path} has sequences of {data['inputs'].shape[1]} tokens: raise --block_size to at least that")
    return data


def codec(meta):
    """(encode, decode) for a dataset's meta.pkl: its characters, or GPT-2's BPE (tiktoken)."""
    if "stoi" in meta:
        stoi, itos = meta["stoi"], meta["itos"]

        def encode(text):
            missing = sorted(set(text) - set(stoi))
            if missing:
                raise UserError(f"the prompt has characters this model never saw: {''.join(missing)!r}")
            return [stoi[c] for c in text]
        return encode, lambda ids: "".join(itos[i] for i in ids)
    import tiktoken
    enc = tiktoken.get_encoding(meta.get("tokenizer", "gpt2"))
    return (lambda text: enc.encode(text, allowed_special={"<|endoftext|>"})), enc.decode


def get_batch(data, batch_size, block_size, generator):
    """(inputs, targets) [batch_size, T]: random windows of a token stream, or random whole sequences."""
    if isinstance(data, dict):
        ix = torch.randint(len(data["inputs"]), (batch_size,), device=data["inputs"].device, generator=generator)
        return data["inputs"][ix], data["targets"][ix]
    ix = torch.randint(len(data) - block_size - 1, (batch_size, 1), device=data.device, generator=generator)
    window = data[ix + torch.arange(block_size + 1, device=data.device)]
    return window[:, :-1], window[:, 1:]


def slice_rows(batch_size, block_size, vocab_size):
    """Rows per evaluation forward: the largest divisor of batch_size (one shape compiles) whose logits stay
    under EVAL_LOGITS (MQAR's batch of 256 x 1024 over 8,192 tokens would be 8 GiB of float32 logits)."""
    rows = max(1, min(batch_size, EVAL_LOGITS // (block_size * vocab_size)))
    while batch_size % rows:
        rows -= 1
    return rows


def summed_loss(model, X, Y, autocast, before_forward, rows):
    """The summed loss over the targets of a batch, and their count, `rows` rows a forward."""
    total = count = torch.zeros((), device=X.device)
    for s in range(0, len(X), rows):
        before_forward()
        with autocast:
            _, loss = model(X[s:s + rows], Y[s:s + rows])
        n = (Y[s:s + rows] >= 0).sum()  # 0 in a padded slice, whose loss is NaN (no sync to ask)
        total, count = total + torch.where(n > 0, loss.float() * n, 0.0), count + n
    return total, count


def ordered_batches(data, rows, block_size, most=0):
    """A split whole, in order: consecutive windows of block_size tokens (the tokens after the last whole
    window left out), or every sequence, `rows` a batch; with `most`, only that many of them, evenly
    spaced (the same ones every time). The last batch is padded with ignored targets: one shape."""
    if isinstance(data, dict):
        X, Y = data["inputs"], data["targets"]
    else:
        n = (len(data) - 1) // block_size
        X, Y = data[:n * block_size].view(n, block_size), data[1:n * block_size + 1].view(n, block_size)
    if 0 < most < len(X):
        keep = torch.arange(most, device=X.device) * len(X) // most
        X, Y = X[keep], Y[keep]
    for s in range(0, len(X), rows):
        x, y = X[s:s + rows], Y[s:s + rows]
        pad = rows - len(x)
        yield (torch.cat([x, x.new_zeros(pad, x.shape[1])]), torch.cat([y, y.new_full((pad, y.shape[1]), -1)])) if pad else (x, y)


@torch.no_grad()
def evaluate(model, data, batch_size, block_size, eval_iters, seed, autocast, before_forward=lambda: None,
             splits=("train", "val"), group=1, vocab_size=1, windows=0):
    """Mean loss over eval_iters batches of each split, drawn by a generator seeded with `seed` (the same
    batches every time). Up to `group` batches go through the model as one (the same windows and mean,
    fewer launches); the group divides eval_iters (one shape compiles) and keeps its logits under
    EVAL_LOGITS. eval_iters = 0: the exact mean over every target of each split (ordered_batches), or
    over at most `windows` of its windows, evenly spread."""
    split0 = data[splits[0]]
    gen = torch.Generator(device=(split0["inputs"] if isinstance(split0, dict) else split0).device).manual_seed(seed)
    largest = max(1, min(group, EVAL_LOGITS // (batch_size * block_size * vocab_size)))
    rows = slice_rows(batch_size, block_size, vocab_size)
    result = {}
    for split in splits:
        total = count = torch.zeros((), device=gen.device)
        if eval_iters == 0:
            for X, Y in ordered_batches(data[split], batch_size * largest, block_size, windows):
                t, n = summed_loss(model, X, Y, autocast, before_forward, rows * largest)
                total, count = total + t, count + n
            result[split] = (total / count).item()
            continue
        group_ = math.gcd(eval_iters, largest)
        for _ in range(eval_iters // group_):
            X, Y = map(torch.cat, zip(*(get_batch(data[split], batch_size, block_size, gen) for _ in range(group_))))
            t, n = summed_loss(model, X, Y, autocast, before_forward, rows * group_)
            total += t / n
        result[split] = (total / (eval_iters // group_)).item()
    return result


@torch.no_grad()
def recall_accuracy(model, data, batch_size, autocast, vocab_size=1, trained_len=None):
    """Accuracy at the positions with a target (MQAR's queries), per (seq_len x kv_pairs) slice and overall;
    with trained_len (the longest training sequence), also over the slices no longer than it ('in_dist')
    and per longer test length ('len<L>'), kept apart. Each batch is cut after its longest sequence: a
    causal model's logits do not depend on the padding after them."""
    hits, counts = {}, {}
    rows = slice_rows(batch_size, data["inputs"].shape[1], vocab_size)
    for s in range(0, len(data["inputs"]), rows):
        width = int(data["seq_len"][s:s + rows].max())
        X, Y = data["inputs"][s:s + rows, :width], data["targets"][s:s + rows, :width]
        with autocast:
            logits, _ = model(X)
        right = ((logits.argmax(-1) == Y) & (Y >= 0)).sum(1)
        for L, kv, r, n in zip(data["seq_len"][s:s + rows].tolist(), data["kv_pairs"][s:s + rows].tolist(),
                               right.tolist(), (Y >= 0).sum(1).tolist()):
            hits[(L, kv)] = hits.get((L, kv), 0) + r
            counts[(L, kv)] = counts.get((L, kv), 0) + n

    def over(keys):
        return sum(hits[k] for k in keys) / max(1, sum(counts[k] for k in keys))
    acc = {f"{L}x{kv}": hits[(L, kv)] / counts[(L, kv)] for L, kv in sorted(counts)}
    if trained_len:
        acc["in_dist"] = over([k for k in counts if k[0] <= trained_len])
        for length in sorted({L for L, _ in counts if L > trained_len}):
            acc[f"len{length}"] = over([k for k in counts if k[0] == length])
    return dict(acc, all=over(list(counts)))
