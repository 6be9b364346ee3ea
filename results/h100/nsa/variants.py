"""NSA's flex+triton layer at the paper's sizes under variants of model_nsa's module constants, one process each:
    python results/h100/nsa/variants.py OUT_DIR NAME REPEAT_KV_CMP REPEAT_KV_WIN SELECT_SCORES [train_runner args...]
e.g. `... /tmp/v base 0 0 16777216 --seq_lens=65536`: the bench_layer rows go to OUT_DIR/NAME/bench_layer.json
(at T = 65,536 a block of SELECT_SCORES scores is SELECT_SCORES / 16,384 query rows)."""
import runpy
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(root))
import model_nsa  # noqa: E402 (after the path): train_runner imports this same module, constants and all

out, name, cmp, win, scores, *rest = sys.argv[1:]
model_nsa.REPEAT_KV_CMP, model_nsa.REPEAT_KV_WIN, model_nsa.SELECT_SCORES = cmp == "1", win == "1", int(scores)
sys.argv = ["train_runner.py", "--stage=bench_layer", "--models=nsa", "--n_head=16", "--n_kv_head=1", "--head_size=44",
            "--select_count=16", "--window=512", "--cmp_block=64", "--cmp_stride=64", "--select_block=64",
            "--use_fla=False", "--use_triton=True", "--trials=5", f"--out_dir={out}/{name}", *rest]
runpy.run_path(str(root / "train_runner.py"), run_name="__main__")
