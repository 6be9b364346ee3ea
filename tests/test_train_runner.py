"""train_runner.py: configuration, bad input, checkpoints, resume, divergence, a real short run."""

import contextlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY
from torch.optim.optimizer import register_optimizer_step_pre_hook

import model as model_module
from lab import TrainingDiverged, UserError, checkpoint, data, families
from lab.settings import parse_argv
from train_runner import configure, train


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "train_runner.py"), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


# -- configuration -------------------------------------------------------------

def test_config_file_then_overrides(tmp_path):
    cfg_file = tmp_path / "c.py"
    cfg_file.write_text("n_layer = 3\nlearning_rate = 3e-4\nout_dir = 'from-file'\nimport math\n_helper = 1\n")
    paths, raw = parse_argv([str(cfg_file), "--n_layer=5", "--pos_emb=rope", "--dropout=0", "--wandb_run_name=123",
                             "--seeds_at_best="])
    s = configure(paths, raw=raw)
    assert s.n_layer == 5 and s.learning_rate == 3e-4 and s.out_dir == "from-file"
    assert s.seeds_at_best == ""  # an empty string, e.g. no extra seeds (it was taken for a bad literal)
    assert s.family["pos_emb"] == "rope" and s.model_args()["pos_emb"] == "rope"  # a field of the family's GPTConfig
    assert s.dropout == 0.0 and isinstance(s.dropout, float)  # an int where a float is expected
    assert s.wandb_run_name == "123"  # strings stay strings
    assert configure(overrides={"n_kv_head": 2}).family["n_kv_head"] == 2
    with pytest.raises(Exception, match="cannot assign"):
        s.n_layer = 1  # frozen: settings are validated once


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
@pytest.mark.parametrize("name", list(families.MODELS))
def test_every_model_builds_in_each_profile(name, profile):
    s = configure(["config/train_shakespeare_char.py"], overrides={"profile": profile, "model_type": name})
    model = families.build(name, s.model_args(), vocab_size=65)
    assert type(model) is families.load(name)[0].GPT
    assert model.config.block_size == s.block_size == (256 if profile == "gpu" else 64)
    assert s.n_embd == (384 if profile == "gpu" else 128)


def test_profile_is_a_setting_and_config_files_read_it(tmp_path):
    cfg_file = tmp_path / "c.py"
    cfg_file.write_text("n_layer = 2 if profile == 'cpu' else 7\n")
    assert configure([str(cfg_file)], raw={"device": "cpu"}).n_layer == 2  # auto: a CPU device gives the cpu profile
    assert configure([str(cfg_file)], raw={"device": "cpu", "profile": "gpu"}).n_layer == 7
    with pytest.raises(UserError, match="profile must be one of auto, cpu, gpu"):
        configure([str(cfg_file)], raw={"profile": "big"})


def test_long_context_config_goes_on_top_of_the_task():
    s = configure(["config/train_shakespeare_char.py", "config/train_longctx.py"],
                  overrides={"profile": "gpu", "model_type": "sparse"})
    assert (s.model_type, s.block_size, s.batch_size) == ("sparse", 2048, 8)
    assert s.family["window"] == 512  # the model's recipe scales its window with the context it is given
    assert families.build("sparse", s.model_args(), vocab_size=65).config.block_size == 2048


def test_recipes_apply_after_the_files_and_can_be_switched_off():
    on = configure(["config/train_shakespeare_char.py"], overrides={"profile": "gpu", "model_type": "delta"})
    assert (on.learning_rate, on.max_iters, on.family["use_short_conv"]) == (3e-3, 1500, False)
    off = configure(["config/train_shakespeare_char.py"],
                    overrides={"profile": "gpu", "model_type": "delta", "recipes": False})
    assert (off.learning_rate, off.max_iters, off.family["use_short_conv"]) == (1e-3, 3000, True)
    given = configure(["config/train_shakespeare_char.py"], overrides={"profile": "gpu", "model_type": "delta",
                                                                       "learning_rate": 0.01})
    assert given.learning_rate == 0.01  # what the command says wins over the recipe


def test_shipped_configs_are_plain_settings():
    for path in sorted((ROOT / "config").rglob("*.py")):
        text = path.read_text()
        assert text.startswith('"""') and len(text.splitlines()) <= 30, path
        assert "import" not in text and "exec(" not in text and "n_embd ==" not in text, path


@pytest.mark.parametrize("raw, message", [
    ({"n_layers": "3"}, "unknown setting 'n_layers' from --n_layers (did you mean 'n_layer'?)"),
    ({"n_layer": "abc"}, "--n_layer=abc: not a valid int"),
    ({"n_layer": "2.5"}, "n_layer must be an int"),
    ({"compile": "1"}, "compile must be True or False"),
    ({"learning_rate": "'fast'"}, "learning_rate must be a number"),
    ({"vocab_size": "100"}, "meta.pkl sets it"),
    ({"model_type": "linaer"}, "did you mean 'linear'"),
    ({"models": "vanilla,lineer"}, "unknown model 'lineer'"),
    ({"window": "8"}, "unknown setting 'window'"),  # a sparse field, and no listed model is sparse
])
def test_bad_overrides(raw, message):
    with pytest.raises(UserError) as e:
        configure(raw=dict({"models": "vanilla"}, **raw))
    assert message in str(e.value)


def test_unknown_key_in_config_file(tmp_path):
    cfg_file = tmp_path / "c.py"
    cfg_file.write_text("n_embed = 128\n")
    with pytest.raises(UserError, match=r"unknown setting 'n_embed' from .*c\.py \(did you mean 'n_embd'\?\)"):
        configure([str(cfg_file)])
    with pytest.raises(UserError, match="not found"):
        configure([str(tmp_path / "missing.py")])


def test_cli_bad_input_is_one_line_and_nonzero(tmp_path):
    result = run_cli("--n_layers=3", f"--out_dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: unknown setting 'n_layers' from --n_layers (did you mean 'n_layer'?)"]
    assert "Traceback" not in result.stderr and not any(tmp_path.iterdir())


def test_a_notebook_in_any_directory_names_config_files_as_the_readme_does(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert configure("config/train_shakespeare_char.py", overrides={"profile": "cpu"}).n_embd == 128


# -- bad input never loses what was written ---------------------------------------

@pytest.mark.parametrize("bad, message", [
    (dict(n_head=5), "n_embd (32) must be divisible by n_head (5)"),
    (dict(n_kv_head=3), "n_head (4) must be divisible by n_kv_head (3)"),
    (dict(block_size=200_000), "block_size 200000 is too long"),
    (dict(dataset="no_such_data"), "dataset 'no_such_data' is not prepared"),
    (dict(init_from="pretrained"), "init_from must be one of scratch, resume"),
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(eval_windows=-1), "eval_windows must be >= 0"),
    (dict(device="cuda:0"), "no CUDA GPU") if not torch.cuda.is_available() else (dict(dtype="fp8"), "dtype must be"),
])
def test_bad_run_settings_write_nothing(shakespeare, tmp_path, bad, message):
    with pytest.raises(UserError) as e:
        train(None, overrides=dict(TINY, out_dir=str(tmp_path / "run"), **bad))
    assert message in str(e.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad", [dict(n_head=5), dict(n_layer=3), dict(block_size=200_000), dict(dataset="nope")])
def test_bad_resume_leaves_the_run_untouched(tiny_run, bad):
    out, _ = tiny_run
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UserError):
        train(None, overrides=dict(TINY, out_dir=str(out), init_from="resume", **bad))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_scratch_run_refuses_to_overwrite(tiny_run):
    out, _ = tiny_run
    with pytest.raises(UserError, match="already exists: continue it with --init_from=resume"):
        train(None, overrides=dict(TINY, out_dir=str(out)))


def test_foreign_corrupt_and_other_family_checkpoints(tiny_run, tmp_path, monkeypatch):
    out, _ = tiny_run
    cases = {
        "foreign": lambda p: torch.save({"model": {}, "iter_num": 3}, p),
        "corrupt": lambda p: p.write_bytes((out / "ckpt.pt").read_bytes()[:5000]),
        "text": lambda p: p.write_text("not a checkpoint"),
    }
    for name, make in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        make(folder / "ckpt.pt")
        with pytest.raises(UserError, match="foreign checkpoint|corrupt or truncated"):
            train(None, overrides=dict(TINY, out_dir=str(folder), init_from="resume"))
    monkeypatch.setitem(families.MODELS, "vanilla_twin", ("model", {}))
    with pytest.raises(UserError, match="holds a 'vanilla' model but model_type='vanilla_twin'"):
        train(None, overrides=dict(TINY, out_dir=str(out), init_from="resume", model_type="vanilla_twin"))


def test_checkpoint_write_is_atomic(tiny_run, tmp_path, monkeypatch):
    out, _ = tiny_run
    target = tmp_path / "ckpt.pt"
    target.write_bytes((out / "ckpt.pt").read_bytes())
    before = target.read_bytes()

    def dies_halfway(obj, f):
        f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", dies_halfway)
    m = checkpoint.model_from(checkpoint.read(target))
    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    with pytest.raises(OSError):
        checkpoint.save(target, m, "vanilla", opt, 1, 1.0, {}, {}, torch.Generator())
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind


# -- training ------------------------------------------------------------------------

def test_short_training_on_real_data_learns(tiny_run):
    out, m = tiny_run
    assert m["status"] == "done" and m["iters"] == 20
    losses = [row[1] for row in m["curves"]["train"]]
    assert losses[-1] < losses[0] and losses[-1] < math.log(65) - 0.5  # clearly below uniform over 65 characters
    assert m["best_val_loss"] < m["curves"]["val"][0][2] - 0.3
    assert math.isclose(m["val_perplexity"], math.exp(m["best_val_loss"]))
    assert m["params"] > 0 and m["tokens_per_sec"] > 0 and m["peak_memory_mib"] > 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["best_val_loss"] == m["best_val_loss"] and saved["config"]["n_layer"] == 2
    assert (out / "losses.csv").read_text().startswith("iter,loss,lr\n")
    assert len((out / "eval.csv").read_text().splitlines()) == 1 + 3  # evals at 0, 10, 20


def test_resume_continues_identically(shakespeare, tmp_path):
    common = dict(TINY, dropout=0.1, always_save_checkpoint=True, max_iters=20, lr_decay_iters=20)
    straight = train(None, overrides=dict(common, out_dir=str(tmp_path / "a")))
    train(None, overrides=dict(common, out_dir=str(tmp_path / "b"), max_iters=10))
    resumed = train(None, overrides=dict(common, out_dir=str(tmp_path / "b"), init_from="resume"))
    assert resumed["curves"]["train"] == straight["curves"]["train"]  # the same losses, bit for bit, dropout included
    assert [r[:3] for r in resumed["curves"]["val"]] == [r[:3] for r in straight["curves"]["val"]]  # r[3]: seconds
    seconds = [r[3] for r in resumed["curves"]["val"]]
    assert seconds == sorted(seconds)  # wall-clock carries on across the resume
    assert resumed["best_val_loss"] == straight["best_val_loss"]


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(shakespeare, tmp_path, monkeypatch):
    forward = model_module.GPT.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None, return_attn=False):
        logits, loss = forward(self, idx, targets)
        if self.training:
            calls["n"] += 1
            if calls["n"] > 12:  # training step 13 on: the loss blows up
                loss = loss * float("nan")
        return logits, loss
    monkeypatch.setattr(model_module.GPT, "forward", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        train(None, overrides=dict(TINY, out_dir=str(out), always_save_checkpoint=True))
    assert json.loads((out / "metrics.json").read_text())["status"] == "diverged"
    ckpt = checkpoint.read(out / "ckpt.pt")
    assert ckpt["iter_num"] == 10  # saved before the NaN, never after
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_notebook_call_with_a_config_file(shakespeare, tmp_path):
    cfg_file = tmp_path / "cfg.py"
    cfg_file.write_text("pos_emb = 'rope'\nn_kv_head = 2\n")
    m = train(str(cfg_file), overrides=dict(TINY, out_dir=str(tmp_path / "r"), max_iters=5, eval_interval=5))
    assert m["config"]["pos_emb"] == "rope" and m["config"]["n_kv_head"] == 2 and m["iters"] == 5
    assert Path(tmp_path / "r" / "ckpt.pt").exists()


def test_dataset_is_prepared_on_first_use(tmp_path, monkeypatch):
    scripts = tmp_path / "scripts"
    (scripts / "toy").mkdir(parents=True)
    (scripts / "toy" / "prepare.py").write_text((ROOT / "data" / "shakespeare_char" / "prepare.py").read_text())
    text = "".join(f"{i % 7} abc xyz\n" for i in range(400))
    (tmp_path / "prepared" / "toy").mkdir(parents=True)
    (tmp_path / "prepared" / "toy" / "input.txt").write_text(text)
    monkeypatch.setattr(data, "SCRIPTS", scripts)
    m = train(None, overrides=dict(TINY, dataset="toy", data_dir=str(tmp_path / "prepared"), out_dir=str(tmp_path / "run"),
                                   max_iters=2, eval_interval=2))
    ckpt = checkpoint.read(tmp_path / "run" / "ckpt.pt")
    assert ckpt["model_args"]["vocab_size"] == len(set(text))  # from the meta.pkl it just wrote
    assert m["status"] == "done"


def test_offline_without_the_data_is_one_line_naming_the_manual_step(tmp_path, monkeypatch):
    import urllib.request

    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match="could not download TinyShakespeare .* save it as .*input.txt"):
        train(None, overrides=dict(TINY, data_dir=str(tmp_path / "empty"), out_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


@pytest.mark.gpu
def test_cuda_graph_training_accumulates_micro_steps_like_eager(shakespeare, tmp_path):
    # the backward's CUDA graph reuses its output memory on the next micro-step (pytorch#169545): gradients
    # accumulated over 4 micro-steps must match eager accumulation, not crash or keep only the last one
    # TF32 off: in float32 both runs round alike, so they agree to float32's precision, not TF32's 10 bits
    common = dict(TINY, device="cuda", dtype="float32", tf32=False, gradient_accumulation_steps=4, log_interval=1,
                  max_iters=12, eval_interval=12, warmup_iters=0)
    graphs = train(overrides=dict(common, compile=True, compile_mode="reduce-overhead", out_dir=str(tmp_path / "g")))
    eager = train(overrides=dict(common, out_dir=str(tmp_path / "e")))
    a, b = [row[1] for row in graphs["curves"]["train"]], [row[1] for row in eager["curves"]["train"]]
    assert len(a) == 12 and a[0] == pytest.approx(b[0], rel=1e-3)
    assert a == pytest.approx(b, rel=1e-3) and a[-1] < a[0] - 0.5


def test_evaluation_in_groups_reads_the_same_windows_and_gives_the_same_mean():
    torch.manual_seed(0)
    m = model_module.GPT(model_module.GPTConfig(block_size=16, vocab_size=65, n_layer=2, n_head=2, n_embd=32)).eval()
    splits = {"train": torch.randint(0, 65, (5000,)), "val": torch.randint(0, 65, (3000,))}
    seen = {}

    def evaluate(group, vocab_size=65):
        calls = []
        real = m.forward
        m.forward = lambda X, Y: (calls.append(X.shape[0]), real(X, Y))[1]
        try:
            return data.evaluate(m, splits, 4, 16, 12, 7, contextlib.nullcontext(), group=group,
                                         vocab_size=vocab_size), calls
        finally:
            del m.forward
    for group in (1, 4, 8):  # 8 does not divide 12 batches: groups of 4 (one compiled shape)
        seen[group] = evaluate(group)
    one, calls_one = seen[1]
    assert calls_one == [4] * 24 and seen[4][1] == [16] * 6 and seen[8][1] == [16] * 6
    huge = data.EVAL_LOGITS // (4 * 16 * 3)  # logits of 3 batches fit, not 4: groups of 3 (a divisor of 12)
    assert evaluate(8, vocab_size=huge)[1] == [12] * 8
    # a batch whose logits alone are over the limit goes in slices of rows that divide it, to the same mean
    sliced, calls = evaluate(8, vocab_size=data.EVAL_LOGITS // 32)
    assert calls == [2] * 48 and sliced == pytest.approx(one, rel=1e-6)
    for group in (4, 8):
        assert seen[group][0] == pytest.approx(one, rel=1e-6)


def test_whole_split_evaluation_is_the_exact_mean_over_every_target():
    torch.manual_seed(0)
    m = model_module.GPT(model_module.GPTConfig(block_size=16, vocab_size=65, n_layer=2, n_head=2, n_embd=32)).eval()
    stream = torch.randint(0, 65, (1000,))  # 62 whole windows of 16 (7 tokens left over): batches of 4 × 8, one padded
    shapes = []
    real = m.forward
    m.forward = lambda X, Y: (shapes.append(tuple(X.shape)), real(X, Y))[1]
    got = data.evaluate(m, {"val": stream}, 4, 16, 0, 7, contextlib.nullcontext(), splits=("val",), group=8)
    del m.forward
    assert shapes == [(32, 16), (32, 16)]  # one shape: the last batch is padded, its padding ignored
    n = 62 * 16
    logits, _ = m(stream[:n].view(62, 16))
    exact = torch.nn.functional.cross_entropy(logits.reshape(n, 65), stream[1:n + 1])
    assert got["val"] == pytest.approx(exact.item(), rel=1e-5)
    # at most 20 of the 62 windows: every 62/20-th (windows 0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 31, ...), one batch
    shapes.clear()
    m.forward = lambda X, Y: (shapes.append(tuple(X.shape)), real(X, Y))[1]
    got = data.evaluate(m, {"val": stream}, 4, 16, 0, 7, contextlib.nullcontext(), splits=("val",), group=8,
                                windows=20)
    del m.forward
    keep = [i * 62 // 20 for i in range(20)]
    assert shapes == [(32, 16)] and keep[:11] == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 31] and keep[-1] == 58
    windows = stream[:n].view(62, 16)[keep], stream[1:n + 1].view(62, 16)[keep]
    exact = torch.nn.functional.cross_entropy(m(windows[0])[0].reshape(-1, 65), windows[1].reshape(-1))
    assert got["val"] == pytest.approx(exact.item(), rel=1e-5)
    # sequences with ignored positions (MQAR's): the mean over the targets there are, not over batches
    X, Y = torch.randint(0, 65, (10, 16)), torch.full((10, 16), -1)
    Y[:, 5], Y[:3, 9] = torch.randint(0, 65, (10,)), torch.randint(0, 65, (3,))
    exact = torch.nn.functional.cross_entropy(m(X)[0].reshape(-1, 65), Y.reshape(-1), ignore_index=-1)
    for vocab_size in (1, data.EVAL_LOGITS // 16):  # whole batches, then one row a forward
        got = data.evaluate(m, {"val": {"inputs": X, "targets": Y}}, 4, 16, 0, 7, contextlib.nullcontext(),
                                    splits=("val",), group=1, vocab_size=vocab_size)
        assert got["val"] == pytest.approx(exact.item(), rel=1e-5)


def grad_norms_at_each_step(fn):
    """fn() with a hook on every optimizer step: the total gradient norm the step is about to apply."""
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
    handle = register_optimizer_step_pre_hook(record)
    try:
        fn()
    finally:
        handle.remove()
    return norms


def test_gradient_clipping_bounds_every_step(shakespeare, tmp_path):
    norms = grad_norms_at_each_step(lambda: train(None, overrides=dict(
        TINY, out_dir=str(tmp_path / "clip"), grad_clip=1e-3, max_iters=4, eval_interval=4)))
    assert len(norms) == 4 and all(n <= 1e-3 * (1 + 1e-4) for n in norms), norms
    free = grad_norms_at_each_step(lambda: train(None, overrides=dict(
        TINY, out_dir=str(tmp_path / "free"), grad_clip=0.0, max_iters=4, eval_interval=4)))
    assert min(free) > 1e-2  # the bound above is the clipping's, not the gradients' own size


def test_accumulated_micro_steps_average_to_one_batch(shakespeare, tmp_path, monkeypatch):
    # every micro-step sees the same batch: the accumulated gradient must equal one micro-step's (their mean),
    # not gradient_accumulation_steps times it
    real, fixed = data.get_batch, {}

    def same_batch(data, batch_size, block_size, generator):
        if batch_size not in fixed:
            fixed[batch_size] = real(data, batch_size, block_size, generator)
        return fixed[batch_size]
    monkeypatch.setattr(data, "get_batch", same_batch)
    first = {}
    for steps in (1, 4):
        norms = grad_norms_at_each_step(lambda: train(None, overrides=dict(
            TINY, out_dir=str(tmp_path / f"acc{steps}"), gradient_accumulation_steps=steps, grad_clip=0.0, max_iters=1,
            eval_interval=1)))
        first[steps] = norms[0]
    assert first[4] == pytest.approx(first[1], rel=1e-5)
