"""Looking inside: attention statistics on maps with known answers, head ablation, checkpoint evaluation,
and the inspect stage's files."""

import json
import math
import shutil

import pytest
import torch
from conftest import TINY

import train_runner
from train_runner import ablated, as_distribution, attention_distance, attention_entropy, configure, local_ratio, map_kind, train

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


@pytest.mark.parametrize("model_type, kw, kind", [
    ("vanilla", {}, "distribution"), ("linear", {}, "distribution"), ("sparse", {"window": 4}, "distribution"),
    ("delta", {"variant": "gated_deltaproduct"}, "signed"),  # the delta rule's map is a signed mixing matrix
    ("nsa", {"n_kv_head": 1, "cmp_block": 4, "cmp_stride": 4, "select_block": 4, "window_size": 4}, "weights")])
def test_family_maps_are_distributions_gated_weights_or_signed(model_type, kw, kind):
    module, _ = train_runner.load_family(model_type)
    model = module.GPT(module.GPTConfig(block_size=16, vocab_size=11, n_layer=1, n_head=2, n_embd=16, **kw)).eval()
    _, _, maps = model(torch.randint(0, 11, (1, 12)), return_attn=True)
    assert map_kind(maps[0][0]) == kind


@pytest.mark.parametrize("model_type", ["vanilla", "linear", "delta"])
def test_ablating_a_head_changes_the_output_and_leaving_it_does_not(model_type):
    torch.manual_seed(0)
    module, _ = train_runner.load_family(model_type)
    model = module.GPT(module.GPTConfig(block_size=16, vocab_size=11, n_layer=2, n_head=4, n_embd=32)).eval()
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


def test_eval_reproduces_the_val_loss_of_training(shakespeare, tmp_path):
    out = tmp_path / "run"
    m = train(None, overrides=dict(TINY, out_dir=str(out), always_save_checkpoint=True))
    cfg = configure(train_runner.DEFAULTS, overrides={"ckpt_path": str(out / "ckpt.pt"), "device": "cpu"})
    result = train_runner.eval_checkpoint(cfg)
    assert result["iter"] == m["iters"] and result["val_loss"] == m["curves"]["val"][-1][2]
    assert json.loads((out / "eval_shakespeare_char.json").read_text())["val_perplexity"] == pytest.approx(
        math.exp(result["val_loss"]))
    with pytest.raises(train_runner.UserError, match="no checkpoint at"):
        train_runner.eval_checkpoint(dict(cfg, ckpt_path=str(tmp_path / "missing.pt")))


def test_inspect_writes_every_plot(tiny_run, tmp_path):
    out = tmp_path / "run"  # a copy: the shared run's folder stays as other tests expect it
    out.mkdir()
    shutil.copy(tiny_run[0] / "ckpt.pt", out / "ckpt.pt")
    cfg = configure(train_runner.DEFAULTS, overrides={"ckpt_path": str(out / "ckpt.pt"), "device": "cpu",
                                                      "ablation_iters": 2, "text": "To be, or not"})
    summary = train_runner.inspect(cfg)
    (name, s), = summary.items()
    assert len(s["entropy"]) == 2 and len(s["entropy"][0]) == 4  # layers x heads of TINY
    assert len(s["ablation_val_loss_increase"]["per_head"]) == 2 and s["map_kinds"] == ["distribution"] * 2
    for png in ("attention_patterns", f"attention_patterns_{name}", "attention_entropy", "attention_distance",
                "attention_masks", "head_ablation"):
        assert (out / "inspect" / f"{png}.png").stat().st_size > 2000, png
    table = (out / "inspect" / "head_ablation.md").read_text()
    assert "| layer | head 0 | head 1 | head 2 | head 3 | whole layer |" in table and table.count("\n| 1 |") == 1
    with pytest.raises(train_runner.UserError, match="text is empty"):
        train_runner.inspect(dict(cfg, text=""))
