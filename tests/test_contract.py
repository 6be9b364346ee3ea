"""The contract every model of the registry (lab/families.py) keeps, checked on each one as the lab builds it
(its presets and recipe, the CPU profile made smaller): no position sees a later token, decoding with the
cache equals recomputing, its parameters match vanilla's within 3% at the bake-off's size, and a
checkpoint round-trips. A new family's line in the registry is all these tests need."""

import pytest
import torch
from conftest import assert_causal, decode_stepwise

import train_runner
from lab import checkpoint, families, sweep

NAMES = list(families.MODELS)
SMALL = dict(profile="cpu", n_layer=2, block_size=32, dropout=0.0, device="cpu", dtype="float32", compile=False)


def entry(name, **changes):
    return train_runner.configure("config/train_shakespeare_char.py", overrides=dict(SMALL, model_type=name, **changes))


def small_model(name, seed=0):
    torch.manual_seed(seed)
    return families.build(name, entry(name).model_args(), vocab_size=11).eval()


@pytest.mark.parametrize("name", NAMES)
def test_no_position_sees_a_later_token(name):
    with torch.no_grad():
        assert_causal(small_model(name), T=32)


@pytest.mark.parametrize("name", NAMES)
def test_decoding_with_the_cache_equals_recomputing(name):
    model = small_model(name)
    idx = torch.randint(0, 11, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = model(idx)
        steps, _ = decode_stepwise(model, idx, 7)
        torch.testing.assert_close(steps, full[:, 6:], rtol=1e-4, atol=1e-4)
        greedy = model.generate(idx[:, :5], 12, temperature=0)
        from model import generate_by_recompute
        assert torch.equal(greedy, generate_by_recompute(model, idx[:, :5], 12, temperature=0))


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
@pytest.mark.parametrize("name", NAMES)
def test_parameters_match_vanilla_at_the_bakeoffs_size(name, profile):
    def at(model_name):
        return train_runner.configure(["config/train_shakespeare_char.py", "config/bakeoff.py"],
                                      overrides=dict(profile=profile, device="cpu", model_type=model_name))
    target = sweep.count_params(at("vanilla"), 65)
    change, n = sweep.match_params(at(name), target, 65)
    assert abs(n / target - 1) <= 0.03
    assert sweep.count_params(at(name).replace(**change), 65) == n


@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_round_trips(name, tmp_path):
    model = small_model(name)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    checkpoint.save(tmp_path / "ckpt.pt", model, name, opt, 3, 1.5, {"dataset": "x"}, {"train": [], "val": []},
                    torch.Generator())
    ckpt = checkpoint.read(tmp_path / "ckpt.pt")
    again = checkpoint.model_from(ckpt).eval()
    assert ckpt["model_type"] == name and type(again) is type(model)
    idx = torch.randint(0, 11, (1, 32))
    with torch.no_grad():
        assert torch.equal(again(idx)[0], model(idx)[0])


@pytest.mark.parametrize("name", NAMES)
def test_past_block_size_where_the_positions_allow_and_one_line_why_not(name):
    own = entry(name).model_args()["pos_emb"]
    torch.manual_seed(0)
    model = families.build(name, entry(name, pos_emb="none" if own == "learned" else own).model_args(), 11).eval()
    with torch.no_grad():
        assert_causal(model, T=80)  # 2.5 x block_size: no position sees a later token out there either
    learned = families.build(name, entry(name, pos_emb="learned").model_args(), 11).eval()
    with pytest.raises(ValueError, match="learned positions have no row past it"):
        learned(torch.zeros(1, 33, dtype=torch.long))
