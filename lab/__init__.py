"""
The lab's modules: what train_runner.py drives, one program a file.

    families    the registry of models (a family file and its presets), building one
    hybrid      hybrids: each layer's attention from a family of the registry
    settings    the configurator: defaults <- config files <- overrides, validated into one frozen Settings
    data        datasets (prepared on first use), batches, evaluation
    files       atomic writes of the record: JSON, CSV, markdown tables, plots
    checkpoint  checkpoints: atomic save, safe load
    trackers    wandb / MLflow / TensorBoard behind one seam
    sweep       parameter matching, runs named by their settings, learning-rate rounds, seeds
    workers     a sweep's worker processes over the GPUs (MPS where it helps)
    bench       train-step, decoding and memory benchmarks
    report      the bake-off's tables and plots
    inspection  a checkpoint's loss, attention maps, head ablation
    mqar        recall (multi-query associative recall) against state size
    placement   where a hybrid's softmax layers go: every placement, seeds, the table and plot
    publish     copying a finished job's record into results/

Imports run one way: train_runner -> lab -> model files; nothing here imports train_runner.
"""


class UserError(Exception):
    """A problem the user fixes (a setting, the data, a checkpoint): one line, no traceback."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def command_line(main, argv):
    """Run a script's main(argv): bad input ends in one line on stderr and exit status 2, Ctrl-C in 130."""
    import sys
    try:
        main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; what was written is whole (files are replaced atomically)", file=sys.stderr)
        sys.exit(130)
