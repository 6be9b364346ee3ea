"""data/shakespeare_char/prepare.py and sample.py."""

import pickle
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import torch
from conftest import ROOT

sys.path.insert(0, str(ROOT / "data" / "shakespeare_char"))
import prepare as char_prepare  # noqa: E402


def test_prepare_on_a_synthetic_corpus(tmp_path):
    text = "".join(f"line {i}: the quick brown fox; ZEBRA!\n" for i in range(50))
    (tmp_path / "input.txt").write_text(text)
    meta = char_prepare.prepare(out_dir=tmp_path)
    train = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "val.bin", dtype=np.uint16)
    assert len(train) == int(0.9 * len(text)) and len(train) + len(val) == len(text)
    assert meta["vocab_size"] == len(set(text)) and list(meta["stoi"]) == sorted(set(text))
    decoded = "".join(meta["itos"][i] for i in np.concatenate([train, val]))
    assert decoded == text
    with open(tmp_path / "meta.pkl", "rb") as f:
        assert pickle.load(f) == meta
    first = (tmp_path / "train.bin").read_bytes()
    char_prepare.prepare(out_dir=tmp_path)  # deterministic
    assert (tmp_path / "train.bin").read_bytes() == first


def test_prepare_on_the_real_file(tmp_path):
    real = ROOT / "data" / "shakespeare_char" / "input.txt"
    if not real.exists():
        pytest.skip("TinyShakespeare is not in this checkout (.ci/run copies it in)")
    meta = char_prepare.prepare(input_path=real, out_dir=tmp_path)
    shakespeare = tmp_path
    assert meta["vocab_size"] == 65
    assert (shakespeare / "train.bin").stat().st_size == 2 * 1_003_854
    assert (shakespeare / "val.bin").stat().st_size == 2 * 111_540


def test_prepare_without_input_or_network_says_what_to_do(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("network unreachable")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(SystemExit) as e:
        char_prepare.prepare(out_dir=tmp_path)
    assert "save it as" in str(e.value) and "--input PATH" in str(e.value)
    with pytest.raises(SystemExit, match="does not exist"):
        char_prepare.prepare(input_path=tmp_path / "nope.txt", out_dir=tmp_path)


def run_sample(*args):
    return subprocess.run([sys.executable, str(ROOT / "sample.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_sample_greedy_equals_recompute(tiny_run):
    out, _ = tiny_run
    result = run_sample(f"--out_dir={out}", "--start=ROMEO:", "--num_samples=1", "--max_new_tokens=40",
                        "--temperature=0", "--device=cpu")
    assert result.returncode == 0, result.stderr
    from lab import checkpoint
    from model import generate_by_recompute
    ckpt = checkpoint.read(out / "ckpt.pt")
    model = checkpoint.model_from(ckpt).eval()
    meta = checkpoint.meta(ckpt)
    idx = torch.tensor([[meta["stoi"][c] for c in "ROMEO:"]])
    expected = "".join(meta["itos"][i] for i in generate_by_recompute(model, idx, 40, temperature=0)[0].tolist())
    assert expected in result.stdout and "ms/token" in result.stdout


def test_sample_bad_input(tiny_run, tmp_path):
    out, _ = tiny_run
    for args, message in [
        ([f"--out_dir={tmp_path}"], "no checkpoint at"),
        ([f"--out_dir={out}", "--start=ROMEO€"], "characters this model never saw"),
        ([f"--out_dir={out}", "--tempreature=0"], "did you mean 'temperature'"),
    ]:
        result = run_sample(*args, "--device=cpu")
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
