"""
Checkpoints: written atomically (a killed run keeps its last whole one), read only after checking they
are ours and whole, and resumed exactly (model, optimizer, iteration, RNG and data-sampler state).
"""

from dataclasses import asdict
from pathlib import Path

import torch

from lab import UserError, data, families
from lab.files import atomic_write

FORMAT = "attention-lab-checkpoint/1"


def save(path, raw_model, model_type, optimizer, iter_num, best_val_loss, config, curves, data_gen):
    ckpt = {
        "format": FORMAT, "model_type": model_type, "model_args": asdict(raw_model.config), "model": raw_model.state_dict(),
        "optimizer": optimizer.state_dict(), "iter_num": iter_num, "best_val_loss": best_val_loss, "config": config,
        "curves": curves,
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "data": data_gen.get_state()},
    }
    atomic_write(path, lambda f: torch.save(ckpt, f))


def read(path):
    """The checkpoint dict, after checking it is one of ours and whole."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: train one first, or point --out_dir at the run's folder")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path} could not be read as a checkpoint ({type(e).__name__}); it is corrupt or truncated") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} was not written by train_runner.py (foreign checkpoint format)")
    return ckpt


def model_from(ckpt, path="checkpoint"):
    """The checkpoint's model, its weights loaded."""
    module, _ = families.load(ckpt["model_type"])
    try:
        model = module.GPT(module.GPTConfig(**ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} does not fit {module.__name__}.GPT: {str(e).splitlines()[0]}") from None
    return model


def meta(ckpt):
    """The vocabulary of the dataset the checkpoint was trained on (its meta.pkl, where its run read it)."""
    config = ckpt["config"]
    path = (Path(config["data_dir"]) if config.get("data_dir") else data.SCRIPTS) / config["dataset"]
    if not (path / "meta.pkl").exists():
        raise UserError(f"{path / 'meta.pkl'} is missing: prepare the dataset this model was trained on "
                        f"(python data/{config['dataset']}/prepare.py)")
    return data.load_meta(path)


def check_resumable(ckpt, path, model_type, model):
    """A resume must continue the same model: its family and every field of its config."""
    if ckpt["model_type"] != model_type:
        raise UserError(f"{path} holds a '{ckpt['model_type']}' model but model_type='{model_type}'")
    wanted = asdict(model.config)
    differ = [f"{k}={wanted[k]!r} (checkpoint: {v!r})" for k, v in ckpt["model_args"].items() if wanted.get(k) != v]
    if differ:
        raise UserError(f"{path} was trained with other model settings: {', '.join(differ)}; resume with the run's own config")
