"""Several processes under torchrun (gloo on CPU; NCCL on GPUs): the same global batch, one writer."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, TINY

ARGS = ["--device=cpu", "--n_layer=2", "--n_head=4", "--n_embd=32", "--block_size=32", "--dropout=0.0", "--eval_iters=0",
        "--eval_windows=256",
        "--eval_interval=20", "--log_interval=10", "--max_iters=60", "--lr_decay_iters=60", "--warmup_iters=2",
        "--learning_rate=1e-2", "--min_lr=1e-3", "--compile=False", "--dtype=float32", "--batch_size=8",
        f"--data_dir={TINY['data_dir']}"]


def train(out, processes, *extra):
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] \
        if processes > 1 else [sys.executable]
    cmd = [*launch, str(ROOT / "train_runner.py"), str(ROOT / "config" / "train_shakespeare_char.py"), *ARGS,
           f"--out_dir={out}", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_two_processes_train_like_one_with_the_same_global_batch(shakespeare, tmp_path):
    two = train(tmp_path / "two", 2, "--gradient_accumulation_steps=2")
    one = train(tmp_path / "one", 1, "--gradient_accumulation_steps=2")
    assert two.returncode == 0 and one.returncode == 0, two.stderr[-2000:]
    a = json.loads((tmp_path / "two" / "metrics.json").read_text())
    b = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert a["status"] == b["status"] == "done" and a["flops_per_iter"] == b["flops_per_iter"]  # same tokens per step
    assert abs(a["best_val_loss"] - b["best_val_loss"]) < 0.1  # different batches, the same training
    assert a["best_val_loss"] < a["curves"]["val"][0][2] - 0.8
    assert two.stdout.count("done: vanilla") == 1  # only rank 0 speaks and writes
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["ckpt.pt", "eval.csv", "losses.csv", "metrics.json"]


def test_accumulation_steps_must_divide_among_processes(shakespeare, tmp_path):
    r = train(tmp_path / "bad", 2, "--gradient_accumulation_steps=3")
    assert r.returncode != 0 and "must be a multiple of the 2 processes" in r.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("family", ["linear", "sparse", "delta_product", "nsa"])
def test_every_family_trains_under_ddp(shakespeare, tmp_path, family):
    # DDP refuses a model whose parameters miss a gradient (it would wait for them forever), and each family
    # adds parameters of its own: gates, short convolutions, compression MLPs
    r = train(tmp_path / family, 2, "--gradient_accumulation_steps=2", f"--model_type={family}", "--max_iters=20",
              "--lr_decay_iters=20", "--eval_interval=10", *(["--n_kv_head=1", "--cmp_block=8", "--cmp_stride=8",
                                                             "--select_block=8", "--window_size=8"] if family == "nsa" else []))
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / family / "metrics.json").read_text())
    assert m["status"] == "done" and m["model_type"] == family and m["best_val_loss"] < m["curves"]["val"][0][2] - 0.3
