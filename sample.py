"""
Generate text from any family's checkpoint (the family is recorded in it).

    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3 --max_new_tokens=500
    python sample.py --out_dir=out-shakespeare-char --start=FILE:prompt.txt
    python sample.py --out_dir=out-shakespeare-char --bench=True    # ms/token: no cache vs cache vs CUDA graph

Decodes with the dataset's meta.pkl when it has one (char-level), else with
tiktoken's GPT-2 encoding. Prints each sample and the decoding speed in ms per
new token; `temperature=0` is greedy.
"""

import json
import sys
import time
from pathlib import Path

import torch

from lab import UserError, checkpoint, command_line, data
from lab.settings import configure_script, parse_argv
from model import generate_by_recompute

# -----------------------------------------------------------------------------
out_dir = "out-shakespeare-char"
start = "\n"  # or "FILE:path/to/prompt.txt"
num_samples = 3
max_new_tokens = 500
temperature = 0.8  # 0: greedy
top_k = 200  # 0: no top-k
seed = 1337
device = "auto"
dtype = "auto"  # 'auto': bfloat16 on a GPU that has it, else float32
cuda_graph = True  # replay each decoding step as one CUDA graph (GPU only)
compile = False  # torch.compile the decoding step (fewer, fused kernels per step; compiles once per shape)
bench = False  # time decoding without a cache, with it, and with CUDA graphs instead of printing samples
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in dict(globals()).items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}


def timed(fn, device_type):
    if device_type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device_type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def main(argv):
    paths, raw = parse_argv(argv)
    cfg = configure_script(DEFAULTS, paths, raw)
    dev = cfg.device
    device_type = "cuda" if dev.startswith("cuda") else "cpu"
    dt = cfg.dtype if cfg.dtype != "auto" else (
        "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32")
    ckpt_path = Path(cfg.out_dir) / "ckpt.pt"
    ckpt = checkpoint.read(ckpt_path)
    model = checkpoint.model_from(ckpt, ckpt_path).to(dev).eval()
    if cfg.compile:
        model.step = torch.compile(model.step, dynamic=False)
    encode, decode = data.codec(checkpoint.meta(ckpt))
    text = cfg.start
    if text.startswith("FILE:"):
        text = Path(text[5:]).read_text(encoding="utf-8")
    idx = torch.tensor([encode(text)], dtype=torch.long, device=dev)
    if idx.numel() == 0:
        raise UserError("the prompt is empty: give --start some text")
    top_k = cfg.top_k or None
    autocast = torch.autocast(device_type, dtype=getattr(torch, dt), enabled=dt != "float32")
    torch.manual_seed(cfg.seed)
    n = cfg.max_new_tokens
    print(f"{ckpt['model_type']} model from {ckpt_path} (iter {ckpt['iter_num']}), {dev}, {dt}")

    if cfg.bench:
        modes = {"no cache (recompute)": lambda: generate_by_recompute(model, idx, n, cfg.temperature, top_k),
                 "cache, eager": lambda: model.generate(idx, n, cfg.temperature, top_k, cuda_graph=False)}
        if device_type == "cuda":
            modes["cache + CUDA graph"] = lambda: model.generate(idx, n, cfg.temperature, top_k, cuda_graph=True)
        results = {}
        with autocast:
            for name, fn in modes.items():
                timed(fn, device_type)  # warm-up: allocation, kernel selection, graph capture
                runs = sorted(timed(fn, device_type)[1] for _ in range(3))
                results[name] = 1e3 * runs[1] / n
                print(f"{name:>22}: {results[name]:.3f} ms/token (median of 3, {n} new tokens, batch 1)")
        print(json.dumps({"model_type": ckpt["model_type"], "prompt_tokens": idx.shape[1], "new_tokens": n,
                          "compiled_step": cfg.compile, "top_k": top_k, "temperature": cfg.temperature,
                          "device": torch.cuda.get_device_name() if device_type == "cuda" else "cpu",
                          "dtype": dt, "ms_per_token": results}))
        return

    for i in range(cfg.num_samples):
        with autocast:
            out, secs = timed(lambda: model.generate(idx, n, cfg.temperature, top_k,
                                                     cuda_graph=cfg.cuda_graph and device_type == "cuda"), device_type)
        print(decode(out[0].tolist()))
        note = " (includes warm-up and CUDA-graph capture; --bench=True times decoding alone)" if i == 0 else ""
        print(f"--------------- {n} tokens in {secs:.2f} s: {1e3 * secs / max(n, 1):.2f} ms/token{note}")


if __name__ == "__main__":
    command_line(main, sys.argv[1:])
