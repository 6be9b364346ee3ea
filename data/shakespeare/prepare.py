"""
TinyShakespeare with GPT-2's BPE (tiktoken) -> train.bin / val.bin (uint16), as nanoGPT's data/shakespeare.

    python data/shakespeare/prepare.py [--input PATH]

Text: --input PATH, else input.txt beside this file, else a download. tiktoken
fetches its GPT-2 merges on first use, so the first run needs the network.
meta.pkl gives GPT-2's vocabulary padded to a multiple of 64 (50,304) and names
the tokenizer, so sample.py decodes with tiktoken.
"""

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "shakespeare_char"))
from prepare import atomic_write_bytes, read_text  # noqa: E402  (the same input rules as the char set)

HERE = Path(__file__).resolve().parent


def prepare(input_path=None, out_dir=HERE):
    import tiktoken

    text = read_text(input_path, Path(out_dir))
    n = int(0.9 * len(text))
    enc = tiktoken.get_encoding("gpt2")
    for split, part in (("train", text[:n]), ("val", text[n:])):
        ids = np.array(enc.encode_ordinary(part), dtype=np.uint16)
        atomic_write_bytes(Path(out_dir) / f"{split}.bin", ids.tobytes())
        print(f"{split}: {len(ids):,} tokens")
    meta = {"vocab_size": 50304, "tokenizer": "gpt2"}  # GPT-2's 50,257 tokens, padded to a multiple of 64
    atomic_write_bytes(Path(out_dir) / "meta.pkl", pickle.dumps(meta))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--input", help="a text file to use instead of input.txt / the download")
    prepare(parser.parse_args().input)
