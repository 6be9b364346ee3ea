"""
Multi-query associative recall (MQAR; Zoology, Arora et al. 2023) -> train.npz / val.npz and meta.pkl.

    python data/mqar/prepare.py                    # the gpu profile: Zoology's setting (vocab 8,192; seq 64-1024)
    python data/mqar/prepare.py --profile=cpu      # a reduced form for a CPU: vocab 256, sequences of 32-64

Both train on sequences up to 256 (cpu: 64) tokens and test also on longer ones: Zoology's val mix up
to 1,024 and one slice of 2,048 (cpu: 128 and 256), so recall past the training length is measured.

A sequence starts with num_kv_pairs key-value pairs (k1 v1 k2 v2 ...; keys drawn without replacement
from the lower half of the vocabulary, values from the upper half). In the rest of the sequence each
key is queried once, at a distance drawn from a power law (p(gap) ∝ gap^(a-1), a = 0.01: most queries
come soon, some very late); every other position is a random token. The target at a query's position
is the key's value; all other targets are -1 (ignored by the loss). So a model must recall, at each
query, the value that followed that key earlier: what separates attention families (Based, Arora et
al. 2024). Each split mixes slices of (seq_len, num_kv_pairs), padded to the split's longest with
ignored targets; `seq_len` and `kv_pairs` per example say which slice it is. Deterministic by seed.
"""

import argparse
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VOCAB = 8192
# vocabulary, and slices of (seq_len, num_kv_pairs, examples)
PROFILES = {
    "gpu": {"vocab": VOCAB,
                "train": [(64, 4, 100_000), (128, 8, 20_000), (256, 16, 20_000), (256, 32, 20_000), (256, 64, 20_000)],
                "val": [(64, 4, 1_000), (64, 8, 1_000), (64, 16, 1_000), (128, 32, 1_000), (256, 64, 1_000),
                        (512, 128, 1_000), (1024, 256, 1_000), (2048, 512, 1_000)]},
    "cpu": {"vocab": 256, "train": [(32, 4, 8_000), (64, 8, 8_000)],
            "val": [(32, 4, 300), (64, 8, 300), (64, 16, 300), (128, 16, 300), (256, 32, 300)]},
}


def current(meta):
    """Whether a folder's meta.pkl was prepared from these slices (a folder prepared before they changed is not)."""
    if meta.get("profile") not in PROFILES:
        return True  # a folder made by hand, not from a profile
    return meta.get("slices") == {split: PROFILES[meta["profile"]][split] for split in ("train", "val")}


def make_mqar(num_examples, seq_len, num_kv_pairs, vocab_size=VOCAB, power_a=0.01, seed=0):
    """(inputs, targets), each [num_examples, seq_len] int64; targets are -1 except at the queries."""
    context = 2 * num_kv_pairs
    space = (seq_len - context) // 2  # query slots: every other position after the context
    if space < num_kv_pairs or num_kv_pairs > vocab_size // 2 - 1:
        raise ValueError(f"seq_len {seq_len} cannot hold {num_kv_pairs} pairs and their queries")
    rng = np.random.default_rng(seed)
    half = vocab_size // 2
    keys = np.argsort(rng.random((num_examples, half - 1)), axis=1)[:, :num_kv_pairs] + 1  # distinct, in 1..half-1
    values = np.argsort(rng.random((num_examples, half)), axis=1)[:, :num_kv_pairs] + half
    inputs = rng.integers(0, vocab_size, (num_examples, seq_len))  # filler: random tokens
    inputs[:, 0:context:2], inputs[:, 1:context:2] = keys, values
    p = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    # num_kv_pairs distinct slots per example, weighted by p (Gumbel top-k = sampling without replacement)
    slots = np.argsort(np.log(p / p.sum()) + rng.gumbel(size=(num_examples, space)), axis=1)[:, ::-1][:, :num_kv_pairs]
    positions = context + 2 * slots  # where each key is asked again
    rows = np.arange(num_examples)[:, None]
    inputs[rows, positions] = keys
    targets = np.full((num_examples, seq_len), -1, dtype=np.int64)
    targets[rows, positions] = values  # at the query, the next token must be the value
    return inputs.astype(np.int64), targets


def make_split(slices, seed, vocab_size=VOCAB):
    width = max(s[0] for s in slices)
    parts = {"inputs": [], "targets": [], "seq_len": [], "kv_pairs": []}
    for i, (seq_len, pairs, n) in enumerate(slices):
        x, y = make_mqar(n, seq_len, pairs, vocab_size, seed=seed * 1000 + i)
        pad = width - seq_len  # padding: filler tokens with ignored targets, after the sequence (causal: unseen)
        parts["inputs"].append(np.pad(x, ((0, 0), (0, pad))))
        parts["targets"].append(np.pad(y, ((0, 0), (0, pad)), constant_values=-1))
        parts["seq_len"].append(np.full(n, seq_len))
        parts["kv_pairs"].append(np.full(n, pairs))
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out["inputs"], out["targets"] = out["inputs"].astype(np.uint16), out["targets"].astype(np.int16)
    return out


def atomic_save(path, write):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        write(f)
    os.replace(tmp, path)


def prepare(profile="gpu", out_dir=HERE):
    out_dir = Path(out_dir)
    for seed, split in enumerate(("train", "val")):  # different seeds: no test sequence is a training one
        data = make_split(PROFILES[profile][split], seed=seed + 1, vocab_size=PROFILES[profile]["vocab"])
        atomic_save(out_dir / f"{split}.npz", lambda f, d=data: np.savez(f, **d))
        print(f"{split}: {len(data['inputs']):,} sequences of up to {data['inputs'].shape[1]} tokens")
    meta = {"vocab_size": PROFILES[profile]["vocab"], "profile": profile,
            "slices": {split: PROFILES[profile][split] for split in ("train", "val")}}
    atomic_save(out_dir / "meta.pkl", lambda f: pickle.dump(meta, f))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="gpu")
    prepare(ap.parse_args().profile)
