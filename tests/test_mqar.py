"""MQAR: the generator's guarantees, sequence datasets, accuracy at the queries, config/mqar.py, the recall stage."""

import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT

import train_runner
from lab import UserError, data, mqar

# loaded under its own name: every data folder's script is called prepare.py
_spec = importlib.util.spec_from_file_location("mqar_prepare", ROOT / "data" / "mqar" / "prepare.py")
mqar_prepare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mqar_prepare)
make_mqar, make_split = mqar_prepare.make_mqar, mqar_prepare.make_split


@pytest.mark.parametrize("seq_len, pairs", [(16, 2), (64, 8), (256, 64)])
def test_every_query_asks_a_key_whose_value_came_earlier(seq_len, pairs):
    x, y = make_mqar(50, seq_len, pairs, vocab_size=512, seed=3)
    half = 256
    for inputs, targets in zip(x, y):
        keys, values = inputs[0:2 * pairs:2], inputs[1:2 * pairs:2]
        assert len(set(keys)) == pairs and (keys < half).all() and (values >= half).all()  # distinct keys, split vocab
        queries = np.flatnonzero(targets >= 0)
        assert len(queries) == pairs and (queries >= 2 * pairs).all()  # the loss sees exactly one position per key
        for q in queries:
            (i,) = np.flatnonzero(keys == inputs[q])  # the query is a key of this sequence ...
            assert targets[q] == values[i]  # ... and its target is the value that followed it
    again, _ = make_mqar(50, seq_len, pairs, vocab_size=512, seed=3)
    assert np.array_equal(x, again) and not np.array_equal(x, make_mqar(50, seq_len, pairs, vocab_size=512, seed=4)[0])


def test_queries_come_soon_more_often_than_late():
    _, y = make_mqar(2000, 256, 4, seed=0)
    gaps = np.concatenate([np.flatnonzero(t >= 0) - 8 for t in y]) // 2
    assert np.mean(gaps < 10) > 0.2 and gaps.max() > 60  # a power law: mostly near, some far


@pytest.fixture
def mqar_data(tmp_path):
    """A tiny MQAR dataset under tmp_path, the data_dir the settings below read."""
    folder = tmp_path / "mqar"
    folder.mkdir()
    splits = (("train", [(16, 2, 2000), (24, 4, 2000)]), ("val", [(16, 2, 64), (24, 4, 64), (32, 4, 64)]))
    for seed, (split, slices) in enumerate(splits):
        np.savez(folder / f"{split}.npz", **make_split(slices, seed=seed + 1, vocab_size=32))
    (folder / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 32}))
    return tmp_path


def recall_job(data_dir, out_dir, **raw):
    """config/mqar.py on a CPU, shrunk to the tiny dataset: four iterations a run."""
    return train_runner.configure("config/mqar.py", raw=dict(dict(
        stage="mqar", device="cpu", data_dir=str(data_dir), out_dir=str(out_dir), models="vanilla", mqar_widths="16",
        block_size="32", batch_size="16", max_iters="4", lr_decay_iters="4", eval_interval="2", eval_iters="2",
        log_interval="2", warmup_iters="1", learning_rates="1e-3,1e-2"), **raw))


def run_metrics(s, row, lr):
    _, groups = mqar.plan(s)
    return json.loads(mqar.run_dir(Path(s.out_dir), groups[row], lr, s.seed).joinpath("metrics.json").read_text())


def test_sequence_batches_and_accuracy(mqar_data):
    s = train_runner.configure(overrides=dict(dataset="mqar", data_dir=str(mqar_data), block_size=32, device="cpu"))
    splits = data.load(s, "cpu")
    assert splits["train"]["inputs"].shape == (4000, 24) and set(splits["val"]["seq_len"].tolist()) == {16, 24, 32}
    X, Y = data.get_batch(splits["train"], 8, 24, torch.Generator().manual_seed(0))
    assert X.shape == Y.shape == (8, 24) and ((Y >= 0).sum(1) >= 2).all()

    class Oracle(torch.nn.Module):  # answers every query right: accuracy 1 on each slice
        def forward(self, idx):
            T = idx.shape[1]  # each batch comes cut after its longest sequence
            hit = (splits["val"]["inputs"][None, :, :T] == idx[:, None, :]).all(-1).float().argmax(1)  # [B] rows
            return torch.nn.functional.one_hot(splits["val"]["targets"][hit, :T].clamp_min(0), 32).float(), None
    for vocab_size in (32, data.EVAL_LOGITS // (32 * 3)):  # batches of 16, then slices of 2 rows
        acc = data.recall_accuracy(Oracle(), splits["val"], 16, torch.autocast("cpu", enabled=False), vocab_size)
        assert acc == {"16x2": 1.0, "24x4": 1.0, "32x4": 1.0, "all": 1.0}
    with pytest.raises(UserError, match="raise --block_size to at least that"):
        data.load(s.replace(block_size=24), "cpu")


def test_recall_past_the_training_length_is_kept_apart_and_each_batch_is_cut_after_its_sequences():
    val = {k: torch.from_numpy(v.astype(np.int64)) for k, v in make_split([(8, 2, 6), (16, 2, 6), (32, 4, 6)], 3, 32).items()}
    widths = []

    class Oracle(torch.nn.Module):  # right at every query of an 8- or 16-token sequence, wrong on the 32s
        def forward(self, idx):
            widths.append(idx.shape[1])
            rows = (val["inputs"][None, :, :idx.shape[1]] == idx[:, None, :]).all(-1).float().argmax(1)
            right = torch.nn.functional.one_hot(val["targets"][rows, :idx.shape[1]].clamp_min(0), 32).float()
            return right * (val["seq_len"][rows] < 32)[:, None, None], None
    acc = data.recall_accuracy(Oracle(), val, 6, torch.autocast("cpu", enabled=False), 32, trained_len=16)
    assert widths == [8, 16, 32]  # each batch is one slice, cut to its own length
    assert acc == {"8x2": 1.0, "16x2": 1.0, "32x4": 0.0, "in_dist": 1.0, "len32": 0.0, "all": 1 / 2}


def test_state_bytes_follow_each_family_cache():
    import model
    import model_delta
    import model_nsa
    import model_sparse
    base = dict(block_size=128, vocab_size=32, n_layer=2, n_head=2, n_embd=64)
    kv = mqar.state_bytes(model.GPT(model.GPTConfig(**base)))
    assert kv == 2 * 2 * 128 * 64 * 2  # layers x (K and V) x context x width x bf16
    assert mqar.state_bytes(model_sparse.GPT(model_sparse.GPTConfig(window=16, **base))) == 2 * 2 * 16 * 64 * 2
    delta = mqar.state_bytes(model_delta.GPT(model_delta.GPTConfig(use_short_conv=False, **base)))
    assert delta == 2 * 2 * 32 * 32 * 4  # layers x heads x K x V x float32, whatever the context
    nsa = mqar.state_bytes(model_nsa.GPT(model_nsa.GPTConfig(n_kv_head=1, cmp_block=16, cmp_stride=16, select_block=16, **base)))
    assert nsa == 2 * 2 * (128 + 8 + 1) * 32 * 2  # layers x (K, V) x (context + compressed blocks + spare) x head x bf16


def test_config_chooses_its_sizes_by_profile():
    cpu = train_runner.configure("config/mqar.py", raw={"device": "cpu"})
    assert cpu.profile == "cpu" and cpu.out_dir == "out-mqar-cpu" and cpu.dataset == "mqar" and not cpu.recipes
    assert (cpu.block_size, cpu.mqar_widths, cpu.learning_rates, cpu.max_iters, cpu.compile) == (256, "32,64", "3e-3", 600, False)
    assert cpu.models == "vanilla,sparse,linear,delta,delta_product" and cpu.family["short_conv"] == 4 and cpu.n_layer == 2
    gpu = train_runner.configure("config/mqar.py", raw={"device": "cpu", "profile": "gpu"})
    assert gpu.out_dir == "out-mqar-gpu" and (gpu.block_size, gpu.batch_size, gpu.max_iters) == (2048, 256, 4000)
    assert gpu.mqar_widths == "64,128,256" and gpu.learning_rates == "3.2e-4,1e-3,3.2e-3,1e-2"
    assert (gpu.lr_bracket, gpu.runs_per_gpu) == (1, 3) and (cpu.lr_bracket, cpu.runs_per_gpu) == (0, 1)
    entries = mqar.plan(gpu)[0]
    assert list(entries)[:3] == ["vanilla d64", "vanilla d128", "vanilla d256"] and len(entries) == 15
    assert all(e.model_args()["pos_emb"] == "none" and e.n_embd == int(row.split(" d")[1]) for row, e in entries.items())


def test_recall_stage_writes_its_table_and_plots(mqar_data, tmp_path):
    s = recall_job(mqar_data, tmp_path / "recall", models="vanilla,delta", mqar_widths="16,32")
    rows = mqar.run(s, train_runner.train)
    assert [(r["model"], r["width"]) for r in rows] == [("vanilla", 16), ("vanilla", 32), ("delta", 16), ("delta", 32)]
    assert all(0 <= r["accuracy"]["all"] <= 1 and r["state_bytes"] > 0 for r in rows)
    for r in rows:  # each family and width at its best learning rate by val accuracy
        assert set(r["lr_sweep"]) == {"0.001", "0.01"} and r["lr_sweep"][f"{r['learning_rate']:g}"] == max(r["lr_sweep"].values())
    md = (tmp_path / "recall" / "mqar.md").read_text()
    assert "| model | width | params | state bytes | best LR | rates done | 16x2 | 24x4 | 32x4 | in-dist | len 32 | all |" in md
    assert all(set(r["accuracy"]) == {"16x2", "24x4", "32x4", "in_dist", "len32", "all"} for r in rows)
    assert "Partial" not in md and all(r["rates_done"] == 2 for r in rows)
    assert all(r["best_lr_at_edge"] for r in rows) and "(edge): the best of the learning rates done" in md  # of two
    record = json.loads((tmp_path / "recall" / "mqar.json").read_text())
    assert record["rows"][0]["accuracy"] == rows[0]["accuracy"]
    commit = run_metrics(s, "vanilla d16", 1e-3)["environment"]["git_commit"]
    assert f"made at commit {commit or 'unknown'}." in md[:md.index("| model |")]  # the runs' commit, atop the table
    m = run_metrics(s, "vanilla d16", 1e-3)
    assert m["config"]["n_embd"] == 16 and m["config"]["min_lr"] == 1e-4
    assert m["tokens_per_sec"] == pytest.approx(16 * 24 / (m["ms_per_iter"] / 1e3))  # the train width, not block_size
    for png in ("mqar_accuracy.png", "mqar_state.png", "mqar_length.png"):
        assert (tmp_path / "recall" / "plots" / png).stat().st_size > 2000
    assert json.loads((tmp_path / "recall" / "job.json").read_text())["stage"] == "mqar"  # what publishing reads
    # a sweep under way: the report alone picks each best among the finished runs and says what is missing
    _, groups = mqar.plan(s)
    for row, lr in (("delta d16", 1e-2), ("delta d32", 1e-3), ("delta d32", 1e-2)):
        path = mqar.run_dir(tmp_path / "recall", groups[row], lr, s.seed) / "metrics.json"
        path.write_text(json.dumps(dict(json.loads(path.read_text()), status="running")))
    path = mqar.run_dir(tmp_path / "recall", groups["vanilla d16"], 1e-2, s.seed) / "metrics.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), best_val_accuracy=0.9, val_accuracy=0.0)))  # it fell apart
    partial = {(r["model"], r["width"]): r for r in mqar.report(s)}
    assert partial["vanilla", 16]["learning_rate"] == 1e-3 and partial["vanilla", 16]["lr_sweep"]["0.01"] == 0.0
    md = (tmp_path / "recall" / "mqar.md").read_text()
    assert "vanilla d16 at 0.01: 0.900 at its best evaluation, 0.000 at the last" in md
    assert partial["delta", 16]["rates_done"] == 1 and partial["delta", 16]["learning_rate"] == 1e-3
    assert not partial["delta", 16]["best_lr_at_edge"]  # one rate done has no edge
    assert partial["delta", 32]["accuracy"] is None and partial["vanilla", 32]["accuracy"] == rows[1]["accuracy"]
    assert "**Partial:** 3 of 8 runs are not finished" in md


def test_recall_stage_brackets_a_best_rate_at_an_end_of_the_grid(mqar_data, tmp_path, capsys):
    s = recall_job(mqar_data, tmp_path / "recall", lr_bracket="1")
    (group,) = mqar.plan(s)[1].values()
    # a sweep worker trains the grid and stops there: the next round is chosen once all of the grid is done
    assert mqar.run(s.replace(sweep_worker=0, sweep_workers=2), train_runner.train) == []
    assert sorted(p.name for p in (tmp_path / "recall" / "runs" / group).iterdir()) == ["lr0.001_s1337", "lr0.01_s1337"]
    assert not (tmp_path / "recall" / "mqar.md").exists()  # the process that started the workers writes it
    (row,) = mqar.run(s, train_runner.train)  # of two rates the best is at an end: one step (x10) past it
    first, second = run_metrics(s, "vanilla d16", 1e-3), run_metrics(s, "vanilla d16", 1e-2)
    beyond = "0.0001" if first["val_accuracy"] >= second["val_accuracy"] else "0.1"
    assert f"vanilla d16's best learning rate is at an end of those tried: also {beyond}" in capsys.readouterr().out
    assert set(row["lr_sweep"]) == {"0.001", "0.01", beyond} and row["rates_done"] == row["rates"] == 3
    # the report alone finds the bracketing run among the grid's, and says when the best is at an end again
    (again,) = mqar.report(recall_job(mqar_data, tmp_path / "recall"))
    assert again["lr_sweep"] == row["lr_sweep"] and again["best_lr_at_edge"] == (f"{row['learning_rate']:g}" == beyond)


def test_a_changed_setting_trains_anew_beside_the_old_runs(mqar_data, tmp_path, capsys):
    s = recall_job(mqar_data, tmp_path / "recall", learning_rates="1e-2", max_iters="2", lr_decay_iters="2")
    mqar.run(s, train_runner.train)
    mqar.run(s, train_runner.train)
    assert "already done, skipped" in capsys.readouterr().out
    changed = recall_job(mqar_data, tmp_path / "recall", learning_rates="1e-2", max_iters="2", lr_decay_iters="2",
                         weight_decay="0.0")
    (row,) = mqar.run(changed, train_runner.train)
    assert "already done" not in capsys.readouterr().out and row["rates_done"] == 1
    folders = sorted(p.name for p in (tmp_path / "recall" / "runs").iterdir())
    assert len(folders) == 2 and all(f.startswith("vanilla_d16-") for f in folders)  # the old runs stay beside
    assert run_metrics(changed, "vanilla d16", 1e-2)["config"]["weight_decay"] == 0.0


def test_a_token_stream_is_refused_before_anything_is_written(shakespeare, tmp_path):
    s = train_runner.configure("config/mqar.py", raw=dict(device="cpu", dataset="shakespeare_char",
                                                          data_dir=str(shakespeare.parent), out_dir=str(tmp_path / "r")))
    with pytest.raises(UserError, match="recall needs whole sequences"):
        mqar.run(s, train_runner.train)
    assert not (tmp_path / "r").exists()
    with pytest.raises(UserError, match="no MQAR run at these settings"):
        mqar.report(s)


@pytest.mark.slow
def test_softmax_attention_with_a_short_conv_learns_tiny_mqar(mqar_data, tmp_path):
    # the short convolution hands each position its predecessor (Zoology pairs every mixer with one);
    # without it softmax attention plateaus at choosing among the values in context for thousands of steps
    m = train_runner.train(None, overrides=dict(
        dataset="mqar", data_dir=str(mqar_data), model_type="vanilla", short_conv=4, pos_emb="rope", n_layer=2, n_head=2,
        n_embd=64, block_size=32, batch_size=64, dropout=0.0, learning_rate=3e-3, min_lr=1e-4, max_iters=400,
        lr_decay_iters=400, warmup_iters=50, eval_interval=200, eval_iters=2, log_interval=200, compile=False, device="cpu",
        dtype="float32", out_dir=str(tmp_path / "vanilla")))
    assert m["val_accuracy"] > 0.95 and m["val_accuracy_by_slice"]["24x4"] > 0.9
    assert [a for _, a in m["curves"]["val_accuracy"]][0] < 0.2  # learned, not there from the start


@pytest.mark.slow
def test_recall_orders_the_families_as_the_literature_does(mqar_data, tmp_path):
    # Zoology's shape at a tiny size: a window shorter than the sequences recalls less than softmax, and
    # DeltaNet more than linear attention at the same width (the same state size)
    def accuracy(model_type, **more):
        return train_runner.train(None, overrides=dict(
            dataset="mqar", data_dir=str(mqar_data), model_type=model_type, short_conv=4, n_layer=2, n_head=2, n_embd=64,
            block_size=32, batch_size=64, dropout=0.0, learning_rate=3e-3, min_lr=1e-4, max_iters=400, lr_decay_iters=400,
            warmup_iters=50, eval_interval=400, eval_iters=2, log_interval=400, compile=False, device="cpu", dtype="float32",
            out_dir=str(tmp_path / model_type), **more))["val_accuracy_by_slice"]
    softmax, window = accuracy("vanilla", pos_emb="rope"), accuracy("sparse", pos_emb="rope", window=2)
    linear, delta = accuracy("linear", pos_emb="none"), accuracy("delta", pos_emb="none")
    assert softmax["all"] > 0.95 and window["all"] < 0.3  # measured 0.997 and 0.097
    assert delta["all"] > 0.9 and delta["all"] > linear["all"] + 0.3  # 0.994 and 0.297


def test_a_folder_prepared_from_other_slices_is_prepared_again(tmp_path, capsys):
    s = train_runner.configure(overrides=dict(dataset="mqar", data_dir=str(tmp_path), profile="cpu", device="cpu", block_size=256))
    data.prepare(s)
    meta = data.load_meta(tmp_path / "mqar")
    assert mqar_prepare.current(meta) and meta["slices"]["val"][-1] == (256, 32, 300)
    (tmp_path / "mqar" / "meta.pkl").write_bytes(pickle.dumps(dict(meta, slices={"val": [(64, 16, 300)]})))  # an earlier form
    capsys.readouterr()
    data.prepare(s)
    assert "preparing" in capsys.readouterr().out and mqar_prepare.current(data.load_meta(tmp_path / "mqar"))
    assert data.load(s, "cpu")["val"]["seq_len"].max() == 256
