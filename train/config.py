"""The trainer's settings: TrainConfig, one typed field per `python -m infgen.train` flag.

    from infgen.train.config import TrainConfig
    from infgen.train.trainer import Trainer
    trainer = Trainer(TrainConfig(out_dir="out/run", preset="tiny", stage1_steps=100, stage2_steps=100))

Each field carries its flag's help and bounds (metadata, made by `option`). add_arguments builds
the command line from dataclasses.fields(TrainConfig) (field `grid_min` is flag `--grid-min`) and
TrainConfig.__post_init__ checks the same bounds, so a run configured from Python is held to the
command line's rules: a bad value is a ValueError (TypeError for a wrong type) whose message
starts with the field's name. The CLI (trainer.parse_args) turns such an error into the tool's
one `error:` line, with the field names spelled as flags (as_flags).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import MISSING, dataclass

import torch

from infgen.cli import number
from infgen.ref.checks import check_number
from infgen.ref.config import PRESETS


def option(default=MISSING, help: str = "", *, kind: type | None = None, lo=None, hi=None, lo_open: bool = False,
           list_of: bool = False, choices=None, metavar: str | None = None):
    """A TrainConfig field and its flag. kind/lo/hi/lo_open: a number checked by check_number (the
    flag's argparse type too); list_of: the flag takes one or more values (the field is a tuple of
    them); no default: a required flag."""
    meta = dict(help=help, kind=kind, lo=lo, hi=hi, lo_open=lo_open, list_of=list_of, choices=choices,
                metavar=metavar)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(kw_only=True, frozen=True)
class TrainConfig:
    """Everything one training run is given (the two stages and the loss: train/trainer.py). Frozen:
    a changed copy is dataclasses.replace(config, lr=1e-3), checked again."""

    preset: str = option("demo", "architecture to train from scratch", choices=tuple(sorted(PRESETS)))
    config: str | None = option(None, "an InfGenConfig JSON file instead of --preset")
    init: str | None = option(None, "checkpoint directory to fine-tune from (its config replaces --preset; no warm start)")
    out_dir: str = option(help="directory for train_state.pt, model/ and log.jsonl", metavar="DIR")
    device: str = option("cpu", "cpu or cuda[:N]")
    stage1_steps: int = option(1500, "plain-VAE steps (encoder + decoder)", kind=int, lo=0)
    stage2_steps: int = option(2500, "InfGen steps (encoder frozen)", kind=int, lo=0)
    batch_size: int = option(8, "images per step", kind=int, lo=1)
    grid_min: int = option(12, "smallest input latent grid side (tokens)", kind=int, lo=1)
    grid_max: int = option(16, "largest input latent grid side (tokens)", kind=int, lo=1)
    max_scale: float = option(4.0, "largest target / input size in stage 2", kind=float, lo=1)
    window: int = option(16, "decoded window side, tokens (8 px each)", kind=int, lo=1)
    warm_start_steps: int = option(200, "positional warm start of cross-attention block 0 before stage 1 (0: off)",
                                   kind=int, lo=0)
    warm_start_target: str = option("nearest", "what the warm start teaches block 0 to attend to: the latent token "
                                               "under each mask token, or the bilinear weights of the nearest "
                                               "tokens", choices=("nearest", "bilinear"))
    warm_start_lr: float = option(3e-3, "learning rate of the warm start", kind=float, lo=0, lo_open=True)
    warm_start_window: int = option(0, "side, in mask tokens, of the random window of the output grid the warm start "
                                       "trains on (0: the whole grid; its cost grows with output x latent tokens, "
                                       "so large --grid-max at 4x needs one, e.g. --window's 16)", kind=int, lo=0)
    lr: float = option(2e-4, "peak learning rate of each stage", kind=float, lo=0, lo_open=True)
    warmup: int = option(100, "linear warmup steps of each stage", kind=int, lo=0)
    weight_decay: float = option(0.01, "AdamW weight decay", kind=float, lo=0)
    kl_weight: float = option(1e-6, "KL weight in stage 1", kind=float, lo=0)
    init_logvar: float = option(-10.0, "initial posterior log-variance (bias)", kind=float, lo=-30, hi=30)
    lpips: str | None = option(None, "local TorchScript LPIPS file; without it LPIPS is off")
    lpips_weight: float = option(0.1, "LPIPS weight", kind=float, lo=0)
    gan_weight: float = option(0.1, "PatchGAN weight in stage 2 (0: off)", kind=float, lo=0)
    gan_start: float = option(0.5, "fraction of stage 2 before the GAN loss starts", kind=float, lo=0, hi=1)
    colour_aug: float = option(0.5, "probability of a random channel order per photo crop; grayscale crops are "
                                     "tinted (0: off)", kind=float, lo=0, hi=1)
    num_generated: int = option(48, "procedural training images", kind=int, lo=0)
    photo_dir: tuple[str, ...] = option((), "extra folders of training photos (scripts/fetch_photos.py makes one)",
                                        list_of=True, metavar="DIR")
    pyramid: tuple[int, ...] = option((1, 2, 4), "downscale factors at which --photo-dir images are kept "
                                                 "(multi-scale crops)", kind=int, lo=1, list_of=True, metavar="F")
    photo_fraction: float = option(0.6, "share of crops taken from photos", kind=float, lo=0, hi=1)
    real_targets: bool = option(False, "targets only from images that hold the whole target at full size "
                                       "(never an upscaled target)")
    scales: tuple[float, ...] | None = option(None, "stage-2 target scales to draw from, e.g. 1 2 4 (default: "
                                                    "uniform in [1, max-scale])", kind=float, lo=1, list_of=True,
                                              metavar="S")
    save_every: int = option(200, "steps between checkpoints", kind=int, lo=1)
    snapshot_every: int = option(0, "also keep <out-dir>/snapshots/stepNNNNNN/ every N steps (learning curves; "
                                    "0: off)", kind=int, lo=0)
    log_every: int = option(10, "steps between log.jsonl lines", kind=int, lo=1)
    seed: int = option(0, "seed of the model init and the data sampling", kind=int, lo=0, hi=2 ** 32 - 1)
    threads: int = option(0, "torch CPU threads (0: torch's default)", kind=int, lo=0, hi=4096)
    resume: bool = option(False, "continue from <out-dir>/train_state.pt")
    quiet: bool = option(False, "no progress bar")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _checked(f, getattr(self, f.name)))  # frozen: set once, checked
        if self.grid_min > self.grid_max:
            raise ValueError(f"grid_min must be <= grid_max ({self.grid_max}), got {self.grid_min}")
        if self.scales is not None and any(s > self.max_scale for s in self.scales):
            raise ValueError(f"scales must lie in [1, max_scale] = [1, {self.max_scale}], got {self.scales}")
        try:
            torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"device must be cpu or cuda[:N], got {self.device!r}") from exc

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainConfig":
        """The parsed command line (add_arguments' flags) -> TrainConfig."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _checked(f: dataclasses.Field, value):
    """One field's value, checked against its metadata; lists become tuples."""
    m, name = f.metadata, f.name
    if isinstance(f.default, bool):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
        return value
    if value is None and f.default is None:
        return None
    if m["list_of"]:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise TypeError(f"{name} must be a list or tuple, got {type(value).__name__} {value!r}")
        if not value and f.default != ():
            raise ValueError(f"{name} must hold at least one value, got {value!r}")
        return tuple(_one(name, m, v) for v in value)
    return _one(name, m, value)


def _one(name: str, m, value):
    if m["kind"] is not None:
        return check_number(name, value, m["kind"], m["lo"], m["hi"], m["lo_open"])
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise TypeError(f"{name} must be a non-empty string or path, got {type(value).__name__} {value!r}")
    if m["choices"] is not None and value not in m["choices"]:
        raise ValueError(f"{name} must be one of {list(m['choices'])}, got {value!r}")
    return os.fspath(value)


def flag(name: str) -> str:
    """A field's flag: grid_min -> --grid-min."""
    return "--" + name.replace("_", "-")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, with the field's help, default and bounds (argparse type
    number(...): every number bounded and finite, else one `error:` line)."""
    for f in dataclasses.fields(TrainConfig):
        m = f.metadata
        kw = dict(dest=f.name, help=m["help"] or None)
        if isinstance(f.default, bool):
            p.add_argument(flag(f.name), action="store_true", **kw)
            continue
        if m["kind"] is not None:
            kw["type"] = number(m["kind"], m["lo"], m["hi"], lo_open=m["lo_open"])
        if m["list_of"]:
            kw["nargs"] = "+"
        if m["choices"] is not None:
            kw["choices"] = m["choices"]
        if m["metavar"] is not None:
            kw["metavar"] = m["metavar"]
        if f.default is MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default
        p.add_argument(flag(f.name), **kw)


FIELD_NAMES = re.compile(r"\b(" + "|".join(f.name for f in dataclasses.fields(TrainConfig)) + r")\b")


def as_flags(message: str) -> str:
    """A TrainConfig error for the command line: the field names before ", got <value>" spelled as
    flags ("grid_min must be <= grid_max (16), got 20" -> "--grid-min must be <= --grid-max (16),
    got 20"); the value, as the user typed it, is left alone."""
    head, sep, value = message.partition(", got ")
    return FIELD_NAMES.sub(lambda mo: flag(mo.group(1)), head) + sep + value
