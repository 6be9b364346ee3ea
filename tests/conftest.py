import random
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import train_runner  # noqa: E402

# The tests' own prepared datasets: whatever data/ holds (prepared or not, from any input) changes no test.
TEST_DATA = Path(tempfile.mkdtemp(prefix="attention-lab-tests-"))
# A model small enough that a run takes a second or two on 2 CPU cores.
TINY = dict(data_dir=str(TEST_DATA), n_layer=2, n_head=4, n_embd=32, block_size=32, batch_size=8, dropout=0.0, eval_iters=2,
            eval_interval=10, log_interval=5, max_iters=20, lr_decay_iters=20, warmup_iters=2,
            learning_rate=1e-2, min_lr=1e-3, compile=False, device="cpu", dtype="float32")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run the tests marked slow (CI does)")


def pytest_collection_modifyitems(config, items):
    gpu = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs a CUDA GPU")
    slow = None if config.getoption("--runslow") else pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if gpu and "gpu" in item.keywords:
            item.add_marker(gpu)
        if slow and "slow" in item.keywords:
            item.add_marker(slow)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (run on the device machine)")
    config.addinivalue_line("markers", "slow: longer than a few seconds on 2 CPU cores")


def corpus():
    """TinyShakespeare where this checkout has it (CI copies it in), else a made-up text of 65 characters."""
    real = ROOT / "data" / "shakespeare_char" / "input.txt"
    if real.exists():
        return real.read_text()
    rng = random.Random(0)
    words = ("the and to of my i you that is in not with me it for be his your this but he have thou so will what "
             "thy all lord by do no shall if are we our king now sir good come more they how").split()
    lines = (" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))).capitalize() + rng.choice(".,;:!?'-&$3")
             for _ in range(20000))
    return "ABCDEFGHIJKLMNOPQRSTUVWXYZbjpqxz\n" + "\n".join(lines) + "\n"  # every letter, so 65 characters


@pytest.fixture(scope="session")
def shakespeare():
    """The char-level dataset, prepared into the tests' own data folder (TINY's data_dir)."""
    folder = TEST_DATA / "shakespeare_char"
    if not (folder / "train.bin").exists():
        sys.path.insert(0, str(ROOT / "data" / "shakespeare_char"))
        from prepare import prepare
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "input.txt").write_text(corpus())
        prepare(input_path=folder / "input.txt", out_dir=folder)
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
