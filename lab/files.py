"""
The record's files, each written atomically (to a temporary file beside it, then renamed): a reader
never sees half a file, and a job killed mid-write leaves the last whole one.
"""

import csv
import io
import json
import os
import tempfile
from pathlib import Path


def atomic_write(path, write):
    """write(f) into a temporary file beside path, then rename it over path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, default=str))


def read_json(path, missing=None):
    """A JSON file's content, or `missing` where there is no such file."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else missing


def write_csv(path, header, rows):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    write_text(path, buf.getvalue())


def markdown_table(header, rows):
    """The lines of a markdown table: header, rule, then one line per row of cells."""
    return ["| " + " | ".join(map(str, header)) + " |", "|---" * len(header) + "|",
            *("| " + " | ".join(map(str, row)) + " |" for row in rows)]


def pyplot():
    """matplotlib's pyplot on its file backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_png(fig, path):
    """Write a matplotlib figure atomically and close it."""
    plt = pyplot()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def environment():
    """What a record was made with: Python, torch, the machine, Triton, the commit (GIT_COMMIT, where a copy
    outside git is told it)."""
    import platform

    import torch
    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        pass
    env["git_commit"] = os.environ.get("GIT_COMMIT") or git_revision()
    return env


def git_revision():
    """This checkout's commit, with '+dirty' when tracked files differ from it; None outside git."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    try:
        rev = git("rev-parse", "--short", "HEAD")
        return (rev + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")) or None
    except OSError:
        return None
