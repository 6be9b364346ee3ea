"""Looking inside: attention statistics on maps with known answers, head ablation, which checkpoints are
looked at, checkpoint evaluation, and the inspect stage's files."""

import json
import math

import pytest
import torch

import train_runner
from lab import UserError, families, inspection, sweep
from lab.inspection import ablated, as_distribution, attention_distance, attention_entropy, local_ratio, map_kind

T = 6


def uniform_causal():
    return torch.ones(T, T).tril() / torch.arange(1, T + 1)[:, None]


def test_statistics_on_maps_with_known_answers():
    eye = torch.eye(T)
    previous = torch.diag(torch.ones(T - 1), -1)
    previous[0, 0] = 1.0  # the first token can only look at itself
    assert attention_entropy(eye) == 0 and attention_distance(eye) == 0 and local_ratio(eye, 1) == 1
    assert attention_distance(previous).item() == pytest.approx((T - 1) / T)
    assert local_ratio(previous, 1).item() == pytest.approx(1 / T) and local_ratio(previous, 2) == 1
    u = uniform_causal()
    assert attention_entropy(u).item() == pytest.approx(sum(math.log(i) for i in range(1, T + 1)) / T)
    assert attention_distance(u).item() == pytest.approx(sum(i / 2 for i in range(T)) / T)  # mean of 0..i is i/2
    stacked = torch.stack([eye, u])  # [heads, T, T] -> one value per head
    assert attention_entropy(stacked).shape == (2,)


def test_maps_are_told_apart_by_their_rows():
    assert map_kind(uniform_causal()) == map_kind(torch.eye(T)) == "distribution"
    assert map_kind(uniform_causal() * 0.7) == "weights"  # non-negative, rows summing to a gate
    assert map_kind(torch.eye(T) - 0.5 * torch.diag(torch.ones(T - 1), -1)) == "signed"
    assert torch.allclose(as_distribution(uniform_causal() * 0.7), uniform_causal())
    assert torch.equal(as_distribution(torch.zeros(3, 3)), torch.zeros(3, 3))  # a row of no weight stays 0


def tiny_model(name, **kw):
    return families.build(name, dict(dict(block_size=16, n_layer=1, n_head=2, n_embd=16), **kw), vocab_size=11).eval()


@pytest.mark.parametrize("name, kw, kind", [
    ("vanilla", {}, "distribution"), ("linear", {}, "distribution"), ("sparse", {"window": 4}, "distribution"),
    ("delta_product", {}, "signed"),  # the delta rule's map is a signed mixing matrix
    ("nsa", {"n_kv_head": 1, "cmp_block": 4, "cmp_stride": 4, "select_block": 4, "window_size": 4}, "weights")])
def test_family_maps_are_distributions_gated_weights_or_signed(name, kw, kind):
    model = tiny_model(name, **kw)
    _, _, maps = model(torch.randint(0, 11, (1, 12)), return_attn=True)
    assert map_kind(maps[0][0]) == kind


@pytest.mark.parametrize("name", ["vanilla", "linear", "delta"])
def test_ablating_a_head_changes_the_output_and_leaving_it_does_not(name):
    torch.manual_seed(0)
    model = tiny_model(name, n_layer=2, n_head=4, n_embd=32)
    idx = torch.randint(0, 11, (2, 16))
    base, _ = model(idx)
    for layer, head in ((0, 1), (1, None)):
        with ablated(model, layer, head):
            changed, _ = model(idx)
        assert not torch.allclose(changed, base)
        assert torch.equal(model(idx)[0], base)  # the hook is gone after the block
    with ablated(model, 1, 2):  # equal to zeroing that head's slice of c_proj's weight by hand
        by_hook, _ = model(idx)
    D = model.transformer.h[1].attn.c_proj.weight.shape[1] // 4
    with torch.no_grad():
        model.transformer.h[1].attn.c_proj.weight[:, 2 * D:3 * D] = 0
    torch.testing.assert_close(model(idx)[0], by_hook)


def test_the_targets_are_the_checkpoint_else_out_dir_else_each_models_best_run(tmp_path):
    s = train_runner.configure(overrides={"out_dir": str(tmp_path), "models": "vanilla,linear", "device": "cpu"})
    with pytest.raises(UserError, match="nothing to look at"):
        inspection.targets(s)
    group = sweep.report_groups(s)["vanilla"]

    def run(lr, seed, best, ckpt=True):
        folder = tmp_path / "runs" / group / f"lr{lr:g}_s{seed}"
        folder.mkdir(parents=True)
        status = "done" if best is not None else "diverged"
        (folder / "metrics.json").write_text(json.dumps({"status": status, "best_val_loss": best,
                                                         "config": {"learning_rate": lr, "seed": seed}}))
        if ckpt:
            (folder / "ckpt.pt").touch()
        return folder / "ckpt.pt"

    run(1e-3, 1, 1.3)  # the best single run, at a rate whose mean over seeds is worse
    run(1e-3, 2, 2.0)
    run(2e-3, 1, 1.5)
    best = run(2e-3, 2, 1.4)
    run(4e-3, 1, None)
    assert inspection.targets(s) == {"vanilla": best}  # linear has no runs: left out
    best.unlink()
    assert inspection.targets(s) == {"vanilla": best.parent.parent / "lr0.002_s1" / "ckpt.pt"}
    (tmp_path / "ckpt.pt").touch()
    assert inspection.targets(s) == {tmp_path.name: tmp_path / "ckpt.pt"}
    assert inspection.targets(s.replace(ckpt_path=str(best))) == {"lr0.002_s2": best}


def test_eval_reproduces_the_val_loss_of_training(tiny_run, tmp_path):
    run, m = tiny_run
    before = sorted(p.name for p in run.iterdir())
    s = train_runner.configure(overrides={"ckpt_path": str(run / "ckpt.pt"), "device": "cpu", "out_dir": str(tmp_path / "o")})
    (result,) = inspection.evaluate_checkpoint(s).values()
    assert result["iter"] == m["iters"] and result["val_loss"] == m["curves"]["val"][-1][2]
    written = json.loads((tmp_path / "o" / "eval" / "run_shakespeare_char.json").read_text())
    assert written["val_perplexity"] == pytest.approx(math.exp(result["val_loss"]))
    assert sorted(p.name for p in run.iterdir()) == before  # nothing is written beside the checkpoint
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    for path, error in ((tmp_path / "missing.pt", "no checkpoint at"), (foreign, "foreign checkpoint")):
        with pytest.raises(UserError, match=error):
            inspection.evaluate_checkpoint(s.replace(ckpt_path=str(path), out_dir=str(tmp_path / "bad")))
    assert not (tmp_path / "bad").exists()


def test_inspect_writes_every_plot(tiny_run, tmp_path):
    run, _ = tiny_run
    s = train_runner.configure(overrides={"ckpt_path": str(run / "ckpt.pt"), "device": "cpu", "ablation_iters": 2,
                                          "text": "To be, or not", "out_dir": str(tmp_path / "o")})
    summary = inspection.inspect(s)
    (name, m), = summary.items()
    assert len(m["entropy"]) == 2 and len(m["entropy"][0]) == 4  # layers x heads of TINY
    assert len(m["ablation_val_loss_increase"]["per_head"]) == 2 and m["map_kinds"] == ["distribution"] * 2
    folder = tmp_path / "o" / "inspect"
    for png in ("attention_patterns", f"attention_patterns_{name}", "attention_entropy", "attention_distance",
                "attention_masks", "head_ablation"):
        assert (folder / f"{png}.png").stat().st_size > 2000, png
    table = (folder / "head_ablation.md").read_text()
    assert "| layer | head 0 | head 1 | head 2 | head 3 | whole layer |" in table and table.count("\n| 1 |") == 1
    assert json.loads((folder / "inspect.json").read_text())["models"][name]["val_loss"] == m["val_loss"]
    for text, error in (("", "text is empty"), ("To be \u00e9", "never saw")):
        with pytest.raises(UserError, match=error):
            inspection.inspect(s.replace(text=text, out_dir=str(tmp_path / "bad")))
    assert not (tmp_path / "bad").exists()
