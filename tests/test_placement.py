"""The placement study (lab/placement.py): which rows it trains, its checks, and a tiny study end to end."""

import json
from pathlib import Path

import pytest
from conftest import TINY

import train_runner
from lab import UserError, placement, publish


def study(out_dir, **changes):
    return train_runner.configure(["config/train_shakespeare_char.py", "config/placement.py"], overrides=dict(
        TINY, profile="cpu", out_dir=str(out_dir), n_layer=4, n_head=2, max_iters=6, lr_decay_iters=6, eval_interval=3,
        seeds="1,2", learning_rates="1e-2", target_params=52500, **changes))  # between softmax and delta at this size


def test_the_default_placements_are_first_middle_last_and_spread():
    assert placement.default_placements(6) == [(0,), (2,), (5,), (0, 1), (2, 3), (4, 5), (2, 5)]
    assert placement.default_placements(4) == [(0,), (1,), (3,), (0, 1), (1, 2), (2, 3), (1, 3)]


def test_rows_are_each_base_alone_each_placement_and_the_mixer_alone(tmp_path):
    rows = placement.plan(study(tmp_path, placement_bases="delta,gated_delta:head_v_dim=16", placements="0,1+3"))
    assert list(rows) == ["delta", "delta + rope at 0", "delta + rope at 1+3", "gated_delta", "gated_delta + rope at 0",
                          "gated_delta + rope at 1+3", "rope"]
    layers, spot, base = rows["gated_delta + rope at 1+3"]
    assert layers == ["gated_delta:head_v_dim=16", "rope", "gated_delta:head_v_dim=16", "rope"] and spot == (1, 3)
    assert base == "gated_delta" and rows["rope"][0] == ["rope"] * 4


@pytest.mark.parametrize("placements, message", [("0,4", "outside 0..3"), ("0,a", "not layer numbers")])
def test_a_bad_placement_is_refused_before_anything_is_written(tmp_path, placements, message):
    with pytest.raises(UserError, match=message):
        placement.run(study(tmp_path / "job", placements=placements), train_runner.train)
    assert not (tmp_path / "job").exists()


def test_a_tiny_study_trains_every_row_and_seed_and_reports_mean_and_spread(shakespeare, tmp_path, tmp_path_factory, monkeypatch):
    s = study(tmp_path, placements="3")
    rows = placement.run(s, train_runner.train)
    assert [r["row"] for r in rows] == ["delta", "delta + rope at 3", "rope"]
    for r in rows:
        assert r["seeds_done"] == 2 and len(r["values"]) == 2 and r["learning_rate"] == 1e-2
        assert r["mean"] == pytest.approx(sum(r["values"]) / 2)
    assert rows[1]["layers"] == ["delta", "delta", "delta", "rope"] and rows[1]["mixer_at"] == [3]
    metrics = sorted(Path(tmp_path, "runs").glob("delta_rope_at_3-*/lr0.01_s*/metrics.json"))
    assert [json.loads(p.read_text())["best_val_loss"] for p in metrics] == rows[1]["values"]
    text = (tmp_path / "placement.md").read_text()
    assert "| delta + rope at 3 | D D D S |" in text and (tmp_path / "plots" / "placement.png").exists()
    again = train_runner.configure(["config/train_shakespeare_char.py", "config/placement.py"], raw=dict(
        stage="placement_report", **{k: str(v) for k, v in dict(
            TINY, profile="cpu", out_dir=str(tmp_path), n_layer=4, n_head=2, max_iters=6, lr_decay_iters=6,
            eval_interval=3, seeds="1,2", learning_rates="1e-2", target_params=52500, placements="3").items()}))
    assert [r["mean"] for r in placement.report(again)] == [r["mean"] for r in rows]  # from the folder alone
    results = tmp_path_factory.mktemp("results")
    (results / "README.md").write_text("# Results\n\n| result | what | hardware | command | headline |\n|---|---|---|---|---|\n")
    monkeypatch.setattr(publish, "RESULTS", results)
    dest = publish.publish(again.replace(stage="publish", publish_to=str(results / "cpu-placement")))
    assert (dest / "placement.md").read_text() == text and (dest / "plots" / "placement.png").exists()
    assert f"best val loss: delta {rows[0]['mean']:.4f}" in (results / "README.md").read_text()
