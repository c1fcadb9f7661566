"""The decode run on the meta device: shapes only, no memory, no GPU, any size.

What the cost model (FLOPs per stage, infgen_ref/cost.py), the memory model (peak live bytes,
infgen_ref/memory.py), the parameter count (config.param_count) and the TensorRT plan's largest
tensor (export/plan.py) know of the architecture, they read from a run of decode.py's
`decode_grid` over an op table, on the model built on the meta device, not from a walk of the
architecture written out by hand:

    run(cfg, Hp, Wp, ops, latent_hw, batch, dtype, count_flops) -> Run
        flops       {module name: FLOPs}, as torch's FlopCounterMode counts them (count_flops)
        largest     (elements, module name): the largest input or output of any Conv2d/GroupNorm op
        events      the allocations and frees of the run, in order (`peak` replays them)

A TorchDispatchMode sees every aten op of the run. The module whose weights an op reads names
where it is (`decoder.up_blocks.3.resnets.0.conv2`); an op that reads no weights (an attention,
a residual add, a reshape) is where the last named one was. An op output whose storage no input
of the op shares is an allocation; it is freed when the last tensor on that storage dies, and
Python frees the decode's tensors as its code drops them, so the liveness is the code's own (a
stage's input is held by decode_grid until the stage returns; a resnet's input by its caller).
Weights and the latent are not allocated by the run, so not counted: the figures are what a
decode adds to a loaded model.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .decode import Ops, decode_grid
from .inpe import INPE
from .model import InfGen


class ConfigKey:
    """A config as a cache key: two keys are equal when their configs' JSON is (InfGenConfig is a
    mutable dataclass, so not hashable itself). `.cfg` is the config."""

    def __init__(self, cfg):
        self.cfg, self.json = cfg, cfg.to_json()

    def __hash__(self) -> int:
        return hash(self.json)

    def __eq__(self, other) -> bool:
        return isinstance(other, ConfigKey) and self.json == other.json


def meta_model(cfg, dtype: torch.dtype = torch.float32) -> InfGen:
    """InfGen(cfg) on the meta device in dtype: every parameter's shape, no memory. Cached per
    (config, dtype); eval, no gradients. Shared: callers must not change it."""
    return _meta_model(ConfigKey(cfg), dtype)


@functools.lru_cache(maxsize=8)
def _meta_model(key: ConfigKey, dtype: torch.dtype) -> InfGen:
    with torch.device("meta"):
        model = InfGen(key.cfg)
    model = model.to(dtype).eval().requires_grad_(False)
    for m in model.modules():
        if isinstance(m, INPE):  # its Fourier matrix is not a parameter: on the meta device now, not during a run
            m.fourier_matrix("meta")
    return model


@dataclasses.dataclass(frozen=True)
class Run:
    """What one meta-device decode did (see the module docstring)."""

    flops: dict          # module name ("" before the first) -> FLOPs, {} unless counted
    largest: tuple       # (elements, module name)
    events: tuple        # ("alloc", id, bytes, where, in_host_eligible) and ("free", id), in order


def run(cfg, Hp: int, Wp: int, ops: Ops, latent_hw: tuple[int, int] | None = None, batch: int = 1,
        dtype: torch.dtype = torch.float32, count_flops: bool = False) -> Run:
    """decode_grid(ops, meta model, latent (batch, C, h_l, w_l), Hp, Wp) on the meta device in
    dtype (latent_hw default: cfg.latent_size square), recorded (module docstring). count_flops:
    also count FLOPs per module with torch.utils.flop_counter.FlopCounterMode."""
    model = meta_model(cfg, dtype)
    hl, wl = latent_hw or (cfg.latent_size, cfg.latent_size)
    z = torch.empty(batch, cfg.latent_channels, hl, wl, device="meta")
    rec = _Recorder(model)
    with torch.no_grad(), contextlib.ExitStack() as stack:
        if count_flops:
            from torch.utils.flop_counter import FlopCounterMode  # imports triton: only when FLOPs are counted
            rec.counter = stack.enter_context(FlopCounterMode(display=False))
        stack.enter_context(rec)  # entered last: it sees each op before the counter counts it
        decode_grid(ops, model, z, Hp, Wp)  # the image is dropped (freed) here
        rec.close()
    return Run(dict(rec.flops), rec.largest, tuple(rec.events))


def mark_host_eligible(t: torch.Tensor) -> None:
    """Called by an op table during a run: t (just allocated by the op) is an activation that a
    banded decode places in host memory when it is larger than host_over bytes (`peak`)."""
    rec = getattr(_current, "recorder", None)
    if rec is not None:
        rec.host_eligible.add(rec.live[_storage(t)][0])


def peak(events, host_over: int | None = None) -> tuple[int, str, int]:
    """(peak device bytes, where the device peak is, peak host bytes) of a run's events, with
    host-eligible allocations (mark_host_eligible) larger than host_over bytes in host memory."""
    cur, top, where, at = {"dev": 0, "host": 0}, {"dev": 0, "host": 0}, "", {}
    for ev in events:
        if ev[0] == "free":
            loc, n = at.pop(ev[1])
            cur[loc] -= n
            continue
        _, i, n, name, eligible = ev
        loc = "host" if eligible and host_over is not None and n > host_over else "dev"
        at[i] = loc, n
        cur[loc] += n
        if cur[loc] > top[loc]:
            top[loc] = cur[loc]
            if loc == "dev":
                where = name
    return top["dev"], where, top["host"]


# ----------------------------------------------------------------------------- the recorder
_current = threading.local()  # the run in progress on this thread (mark_host_eligible)


def _tensors(xs) -> list:
    """The tensors among xs and in its lists/tuples (an aten op's arguments or results)."""
    out = []
    for x in xs:
        if isinstance(x, torch.Tensor):
            out.append(x)
        elif isinstance(x, (tuple, list)):
            out.extend(t for t in x if isinstance(t, torch.Tensor))
    return out


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata  # the storage's identity (meta storages have no address)


class _Recorder(TorchDispatchMode):
    """Records a run (module docstring). live: storage -> [allocation id, tensors on it]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.names = {}  # weight storage -> (module name, whether a Conv2d or GroupNorm)
        for name, mod in model.named_modules():
            for p in mod.parameters(recurse=False):
                self.names[_storage(p)] = name, isinstance(mod, (nn.Conv2d, nn.GroupNorm))
        self.counter, self.counted, self.flops = None, 0, {}
        self.where, self.largest = "", (0, "")
        self.live, self.events, self.host_eligible, self.next_id, self.open = {}, [], set(), 0, True

    def __enter__(self):
        _current.recorder = self
        return super().__enter__()

    def __exit__(self, *exc):
        _current.recorder = None
        return super().__exit__(*exc)

    def close(self) -> None:
        """Attribute the FLOPs counted since the last module change; frees after this are not recorded."""
        self._moved_to(self.where)
        self.open = False
        self.events = [ev if ev[0] == "free" else ev[:4] + (ev[1] in self.host_eligible,) for ev in self.events]

    def _moved_to(self, where: str) -> None:
        if self.counter is not None:
            total = self.counter.get_total_flops()
            if total != self.counted:
                self.flops[self.where] = self.flops.get(self.where, 0) + total - self.counted
                self.counted = total
        self.where = where

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = _tensors(args) + _tensors(kwargs.values())
        held, module = set(), None
        for t in inputs:
            k = _storage(t)
            held.add(k)
            if k in self.names and module is None:
                module = self.names[k]
        if module is not None and module[0] != self.where:
            self._moved_to(module[0])
        out = func(*args, **kwargs)
        outputs = _tensors(out if isinstance(out, (tuple, list)) else (out,))
        if module is not None and module[1]:
            n = max(t.numel() for t in inputs + outputs)
            if n > self.largest[0]:
                self.largest = n, module[0]
        for t in outputs:
            k = _storage(t)
            if k not in self.live:
                if k in held:  # a view or an in-place result of a tensor the run did not allocate
                    continue
                self.live[k] = [self.next_id, 0]
                self.events.append(("alloc", self.next_id, t.untyped_storage().nbytes(), self.where, False))
                self.next_id += 1
            self.live[k][1] += 1
            weakref.finalize(t, self._dropped, k)
        return out

    def _dropped(self, k: int) -> None:
        entry = self.live.get(k)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self.live[k]
            if self.open:
                self.events.append(("free", entry[0]))
