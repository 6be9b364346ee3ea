"""
Trackers: wandb, MLflow and TensorBoard behind one seam, on top of the local files a run always writes.
Each is imported only when switched on; one that is on but not installed stops the job before it starts;
one that fails mid-run is reported once and dropped, and the run goes on.
"""

import importlib
import sys
from pathlib import Path

from lab import UserError

PACKAGES = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard"}


def wanted(s):
    return [name for name, on in (("wandb", s.wandb_log), ("mlflow", s.mlflow_uri), ("tensorboard", s.tensorboard_dir)) if on]


def check(s):
    """Before anything runs: each tracker switched on must be importable."""
    for name in wanted(s):
        try:
            importlib.import_module("torch.utils.tensorboard" if name == "tensorboard" else name)
        except ImportError:
            raise UserError(f"{name} is switched on but not installed: pip install {PACKAGES[name]}") from None


def run_tags(s):
    return {"task": "lm", "family": s.model_type, "longctx": str(s.block_size >= 1024).lower()}


class Tracker:
    """The trackers the settings switch on, for one run (or a sweep's report, or a benchmark);
    `enabled=False` starts none (a worker that only compiles, a process that is not rank 0)."""

    def __init__(self, s, name, tags=None, group=None, enabled=True):
        self.live, tags = {}, {k: str(v) for k, v in (tags or {}).items()}
        params = {k: v for k, v in vars(s).items() if isinstance(v, (bool, int, float, str, type(None)))}
        params.update(s.family)
        for kind in wanted(s) if enabled else []:
            self._call(kind, self._start, kind, s, name, tags, group, params)

    def _start(self, kind, s, name, tags, group, params):
        if kind == "wandb":
            import wandb
            self.live[kind] = wandb.init(project=s.wandb_project, name=name, group=group, config=params,
                                         tags=[f"{k}={v}" for k, v in tags.items()], reinit="finish_previous")
        elif kind == "mlflow":
            import mlflow
            mlflow.set_tracking_uri(s.mlflow_uri)
            mlflow.set_experiment(s.wandb_project)
            run = mlflow.start_run(run_name=name, tags=dict(tags, **({"sweep": group} if group else {})))
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            self.live[kind] = run
        else:
            from torch.utils.tensorboard import SummaryWriter
            self.live[kind] = SummaryWriter(str(Path(s.tensorboard_dir) / name))

    def _call(self, kind, fn, *args):
        try:
            fn(*args)
        except Exception as e:  # a broken tracker must not cost the run its results
            print(f"warning: {kind} failed ({type(e).__name__}: {e}); going on with the local files only", file=sys.stderr)
            self.live.pop(kind, None)

    def log(self, metrics, step):
        metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
        for kind, handle in list(self.live.items()):
            if kind == "wandb":
                self._call(kind, handle.log, metrics, step)
            elif kind == "mlflow":
                import mlflow
                self._call(kind, mlflow.log_metrics, metrics, step)
            else:
                self._call(kind, lambda: [handle.add_scalar(k, v, step) for k, v in metrics.items()])

    def text(self, title, body):
        for kind, handle in list(self.live.items()):
            if kind == "tensorboard":
                self._call(kind, handle.add_text, title, body)
            elif kind == "mlflow":
                import mlflow
                self._call(kind, mlflow.log_text, body, f"{title}.md")

    def artifacts(self, paths):
        for kind in list(self.live):
            if kind == "mlflow":
                import mlflow
                for p in paths:
                    self._call(kind, mlflow.log_artifact, str(p))
            elif kind == "wandb":
                import wandb
                for p in paths:
                    self._call(kind, wandb.save, str(p), str(Path(p).parent))

    def finish(self, summary=None):
        summary = {k: v for k, v in (summary or {}).items() if isinstance(v, (int, float)) and v is not None}
        for kind, handle in list(self.live.items()):
            if kind == "wandb":
                self._call(kind, lambda: (handle.summary.update(summary), handle.finish()))
            elif kind == "mlflow":
                import mlflow
                self._call(kind, lambda: (mlflow.log_metrics({f"final_{k}": v for k, v in summary.items()}),
                                          mlflow.end_run()))
            else:
                self._call(kind, handle.close)
        self.live = {}
