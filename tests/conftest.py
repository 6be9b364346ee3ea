import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import train_runner  # noqa: E402

# A model small enough that a run takes a second or two on 2 CPU cores.
TINY = dict(n_layer=2, n_head=4, n_embd=32, block_size=32, batch_size=8, dropout=0.0, eval_iters=2,
            eval_interval=10, log_interval=5, max_iters=20, lr_decay_iters=20, warmup_iters=2,
            learning_rate=1e-2, min_lr=1e-3, compile=False, device="cpu", dtype="float32")


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (run on the device machine)")
    config.addinivalue_line("markers", "slow: longer than a few seconds on 2 CPU cores")


@pytest.fixture(scope="session")
def shakespeare():
    """The char-level dataset, prepared from data/shakespeare_char/input.txt (CI copies it in)."""
    folder = ROOT / "data" / "shakespeare_char"
    if not (folder / "train.bin").exists():
        if not (folder / "input.txt").exists():
            pytest.skip("data/shakespeare_char/input.txt is missing (.ci/run copies it in)")
        sys.path.insert(0, str(folder))
        from prepare import prepare
        prepare()
    return folder


@pytest.fixture(scope="session")
def tiny_run(shakespeare, tmp_path_factory):
    """One tiny trained checkpoint shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    metrics = train_runner.train(None, overrides=dict(TINY, out_dir=str(out), always_save_checkpoint=True))
    return out, metrics


def assert_causal(model, vocab_size=11, T=16, device="cpu"):
    """Changing token t changes no logit before t (bit for bit), and does change position t."""
    idx = torch.randint(0, vocab_size, (2, T), device=device)
    base, _ = model(idx)
    for t in (0, T // 2 - 1, T - 1):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % vocab_size
        logits, _ = model(changed)
        assert torch.equal(logits[:, :t], base[:, :t]), f"a position before {t} saw token {t}"
        assert not torch.allclose(logits[:, t], base[:, t])


def decode_stepwise(model, idx, prefill):
    """Logits of positions prefill-1 .. T-1 of idx [B, T]: a prefill of the first tokens through fresh
    caches, then one cached step per token (compare with model(idx)[0][:, prefill - 1:])."""
    caches = model.new_caches(idx.shape[0])
    steps = [model.step(idx[:, :prefill], torch.arange(prefill), caches)]
    steps += [model.step(idx[:, t:t + 1], torch.arange(t, t + 1), caches) for t in range(prefill, idx.shape[1])]
    return torch.stack(steps, 1), caches


def logits_and_grad(model, idx, weight, forward=None):
    """bf16 forward + backward of (forward or model) on idx: the logits and the gradient of `weight`."""
    model.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, loss = (model if forward is None else forward)(idx, idx)
    loss.backward()
    return logits.float(), weight.grad.clone()


def assert_close_relative(outs, tol):
    for a, b in zip(*outs):
        assert ((a - b).norm() / b.norm()).item() < tol


def assert_fast_path_matches_reference(model, flag, idx, weight, tol=2e-2):
    """bf16 forward + backward with model.config.<flag> (or each of a tuple of flags) on (the fast
    kernel) and off (the PyTorch reference): the logits and the gradient of `weight` agree to a
    relative error of tol."""
    outs = []
    for fast in (True, False):
        for name in (flag,) if isinstance(flag, str) else flag:
            setattr(model.config, name, fast)  # the layers share the model's config
        outs.append(logits_and_grad(model, idx, weight))
    assert_close_relative(outs, tol)


def assert_compiled_matches_eager(model, idx, weight, breaks=0, tol=2e-2):
    """torch.compile(model) traces with `breaks` graph breaks (0: one graph, the step can replay as CUDA
    graphs; None: not counted) and its bf16 logits and gradient of `weight` agree with the eager model's
    to a relative error of tol."""
    if breaks is not None:
        explained = torch._dynamo.explain(model)(idx, idx)
        assert explained.graph_break_count == breaks, [r.reason.splitlines()[0] for r in explained.break_reasons]
    outs = [logits_and_grad(model, idx, weight, forward) for forward in (torch.compile(model, dynamic=False), None)]
    assert_close_relative(outs, tol)
