"""
Char-level TinyShakespeare -> train.bin / val.bin (uint16 token ids) and meta.pkl.

    python data/shakespeare_char/prepare.py [--input PATH]

The text comes from --input PATH if given, else input.txt beside this file, else
the canonical tinyshakespeare file is downloaded (1,115,394 bytes). The first 90%
of the characters are train, the rest val; the vocabulary is the sorted set of
characters, so the output is the same on every machine for the same input.
meta.pkl holds {'vocab_size', 'itos', 'stoi'} as in nanoGPT.
"""

import argparse
import hashlib
import os
import pickle
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def atomic_write_bytes(path, data):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read_text(input_path, out_dir):
    if input_path is not None:
        if not Path(input_path).is_file():
            sys.exit(f"error: --input {input_path} does not exist")
        return Path(input_path).read_text(encoding="utf-8")
    local = out_dir / "input.txt"
    if not local.exists():
        print(f"downloading {URL}")
        try:
            with urllib.request.urlopen(URL, timeout=30) as r:
                atomic_write_bytes(local, r.read())
        except OSError as e:
            sys.exit(f"error: could not download TinyShakespeare ({e}); save it as {local} or pass --input PATH")
    return local.read_text(encoding="utf-8")


def prepare(input_path=None, out_dir=HERE):
    out_dir = Path(out_dir)
    text = read_text(input_path, out_dir)
    if len(text) < 100:
        sys.exit(f"error: the input has {len(text)} characters; give a real corpus")
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(0.9 * len(ids))
    atomic_write_bytes(out_dir / "train.bin", ids[:n].tobytes())
    atomic_write_bytes(out_dir / "val.bin", ids[n:].tobytes())
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}
    atomic_write_bytes(out_dir / "meta.pkl", pickle.dumps(meta))
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    print(f"{len(text):,} characters (sha256 {digest[:16]}…), vocab {len(chars)}: "
          f"{n:,} train / {len(ids) - n:,} val tokens -> {out_dir}")
    return meta


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--input", help="a text file to use instead of input.txt / the download")
    prepare(parser.parse_args().input)
