"""Loss against context length (lab/length.py): the two conventions, checked against their definitions."""

import contextlib
import json

import pytest
import torch
from conftest import TINY

import train_runner
from lab import UserError, data, families, inspection, length, sweep


def model_with(pos_emb, block_size=16, seed=0):
    torch.manual_seed(seed)
    s = train_runner.configure(overrides=dict(TINY, block_size=block_size, pos_emb=pos_emb))
    return families.build("vanilla", s.model_args(), 11).eval()


def text_of(n, seed=1):
    return torch.randint(0, 11, (n + 1,), generator=torch.Generator().manual_seed(seed))


def test_at_its_own_block_size_the_chunks_give_the_bakeoffs_exact_val_loss():
    model, text = model_with("learned"), text_of(16 * 12)
    ours = length.measure(model, text, 16, 16, 64)["chunks"]
    theirs = data.evaluate(model, {"val": text}, 4, 16, 0, 0, contextlib.nullcontext(), splits=("val",))["val"]
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_the_sliding_window_scores_each_target_once_with_its_windows_context():
    model, text, L, stride = model_with("rope"), text_of(64), 32, 8
    got = length.measure(model, text, L, stride, 64)["sliding"]
    expected = []
    with torch.no_grad():
        for t in range(64):  # the window that scores target t: the first, or the one whose last `stride` it is
            start = 0 if t < L else ((t - L) // stride + 1) * stride
            logits, _ = model(text[start:start + L][None])
            expected.append(torch.nn.functional.cross_entropy(logits[0, t - start], text[t + 1]).item())
    assert got == pytest.approx(sum(expected) / 64, rel=1e-6)


def test_the_two_conventions_agree_where_the_text_fits_in_one_window():
    model, text = model_with("alibi"), text_of(48)
    m = length.measure(model, text, 48, 16, 48)
    assert m["chunks"] == pytest.approx(m["sliding"], rel=1e-12)


def test_a_prefix_loss_does_not_depend_on_what_follows():
    model, text = model_with("none"), text_of(64)
    later = text.clone()
    later[40:] = (later[40:] + 1) % 11
    a = length.window_losses(model, text, 64, [0], 64)[0]
    b = length.window_losses(model, later, 64, [0], 64)[0]
    assert torch.equal(a[:39], b[:39]) and not torch.equal(a[39:], b[39:])  # target 39 is token 40


def test_the_stage_refuses_learned_positions_past_block_size_in_one_line(shakespeare, tmp_path):
    out = tmp_path / "run"
    train_runner.train(overrides=dict(TINY, out_dir=str(out), max_iters=4, eval_interval=4))
    s = train_runner.configure(overrides=dict(TINY, out_dir=str(out), stage="length", length_factors="1,2", length_chunks=2))
    rows = length.run(s)
    [row] = rows.values()
    assert row["lengths"][64] == {"refused": length.REFUSED} and row["lengths"][32]["chunks"] > 0
    written = json.loads((out / "length" / "length.json").read_text())
    assert written["rows"]["run"]["lengths"]["64"] == {"refused": length.REFUSED}
    assert "| run | learned | 32 |" in (out / "length" / "length.md").read_text()
    assert (out / "length" / "length.png").exists()


@pytest.mark.parametrize("changes, message", [
    (dict(length_factors="0,2"), "whole multiples"), (dict(length_stride=64), "longer than block_size"),
    (dict(length_factors="1,100000"), "fewer than the longest context"),
])
def test_bad_length_settings_stop_before_anything_is_written(shakespeare, tmp_path, changes, message):
    out = tmp_path / "run"
    train_runner.train(overrides=dict(TINY, out_dir=str(out), max_iters=2, eval_interval=2))
    s = train_runner.configure(overrides=dict(TINY, out_dir=str(out), stage="length", **changes))
    with pytest.raises(UserError, match=message):
        length.run(s)
    assert not (out / "length").exists()


def test_a_jobs_model_is_measured_on_every_seed_at_its_rate(shakespeare, tmp_path):
    job = dict(TINY, out_dir=str(tmp_path / "job"), models="rope", learning_rates="1e-3", seeds="1337,7", max_iters=4,
               eval_interval=4, length_factors="1,2", length_chunks=2)
    s = train_runner.configure(overrides=dict(job, stage="length"))
    rows = train_runner.lengths(s)  # trains the two runs first
    row = rows["rope"]
    alone = [length.evaluate(inspection.load(path, s), s) for _, path in
             inspection.checkpoints_at_best_rate(tmp_path / "job", sweep.report_groups(s)["rope"])]
    assert row["seeds"] == len(alone) == 2
    for L in (32, 64):
        losses = [r["lengths"][L]["chunks"] for r in alone]
        assert losses[0] != losses[1] and row["lengths"][L]["chunks"] == pytest.approx(sum(losses) / 2)
        assert row["lengths"][L]["chunks_std"] == pytest.approx(abs(losses[0] - losses[1]) / 2 ** 0.5)
    assert "| rope | rope | 32 | 2 |" in (tmp_path / "job" / "length" / "length.md").read_text()


@pytest.mark.slow
def test_the_main_job_reports_loss_past_the_training_length(shakespeare, tmp_path):
    s = train_runner.configure(overrides=dict(
        TINY, stage="bakeoff", out_dir=str(tmp_path / "job"), models="vanilla,rope", learning_rates="1e-3", max_iters=4,
        eval_interval=4, length_factors="1,2", length_chunks=2, decode_lens="8", seq_lens="16", tokens_per_batch=64,
        trials=1, decode_trials=1))
    train_runner.bakeoff(s)
    md = (tmp_path / "job" / "bakeoff.md").read_text()
    section = md[md.index("## Loss against context length"):]
    assert "| vanilla | learned | 32 | 1 |" in section and "| rope | rope | 32 | 1 |" in section
    rope = json.loads((tmp_path / "job" / "length" / "length.json").read_text())["rows"]["rope"]["lengths"]
    assert rope["64"]["chunks"] > 0 and f"{rope['64']['chunks']:.4f} / {rope['64']['sliding']:.4f}" in section
    assert section.count("–") >= 1  # vanilla's learned positions stop at 32
