"""Cost, parameter count, peak memory and the export plan's largest tensor are read from the decode
run on the meta device (infgen_ref/walk.py), not walked by hand (#34 item 2). The hand walks they
replace are kept here, and only here, as oracles where they were right: FLOPs at batch 1, the
parameter count, the largest conv/GroupNorm tensor. The memory model is checked against the banded
decode's real band loops and against peaks counted by hand."""
import ast
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from infgen.export.plan import largest_tensor
from infgen.ref.banded import banded_ops
from infgen.ref.decode import TORCH_OPS
from infgen.ref.config import PRESETS, InfGenConfig, param_count, preset
from infgen.ref.cost import STAGES, decode_flops
from infgen.ref.memory import _flash_attention, predict_peak
from infgen.ref.model import InfGen
from infgen.ref.walk import mark_host_eligible, peak, run

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, num_heads=2, num_blocks=1,
             inpe_fourier_dim=4)


# ----------------------------------------------------------------------------- the old hand walks (oracles)
def _conv_flops(cin, cout, k, h, w):
    return 2 * cin * cout * k * k * h * w


def _resnet_flops(cin, cout, h, w):
    return (_conv_flops(cin, cout, 3, h, w) + _conv_flops(cout, cout, 3, h, w)
            + (_conv_flops(cin, cout, 1, h, w) if cin != cout else 0))


def flops_by_hand(cfg, h, w, latent_hw):
    """The cost model before #34 (batch 1)."""
    hl, wl = latent_hw
    Hp, Wp = math.ceil(h / cfg.upscale), math.ceil(w / cfg.upscale)
    d, C, F2 = cfg.token_dim, cfg.latent_channels, 2 * cfg.inpe_fourier_dim
    T, N = hl * wl, Hp * Wp
    ch = list(reversed(cfg.block_out_channels))

    def lin(n, i, o):
        return 2 * n * i * o
    tokens = (_conv_flops(C, C, 1, hl, wl) + _conv_flops(C, ch[0], 3, hl, wl) + _conv_flops(ch[0], d, 3, hl, wl)
              + lin(T + N, 3, F2 // 2) + lin(T, F2, d) + lin(T, d, d) + lin(N, F2, d) + lin(N, d, d))
    block = 2 * lin(N, d, d) + 2 * lin(T, d, d) + 4 * N * T * d + lin(N, d, cfg.mlp_dim) + lin(N, cfg.mlp_dim, d)
    mid = 2 * _resnet_flops(ch[0], ch[0], Hp, Wp) + 4 * lin(N, ch[0], ch[0]) + 4 * N * N * ch[0]
    up, hh, ww, cin = 0, Hp, Wp, ch[0]
    for i, cout in enumerate(ch):
        for j in range(cfg.layers_per_block + 1):
            up += _resnet_flops(cin if j == 0 else cout, cout, hh, ww)
        cin = cout
        if i < len(ch) - 1:
            hh, ww = 2 * hh, 2 * ww
            up += _conv_flops(cout, cout, 3, hh, ww)
    up += _conv_flops(ch[-1], cfg.in_channels, 3, hh, ww)
    return {"tokens": tokens, "cross_attn": cfg.num_blocks * block, "mid_block": mid, "up_blocks": up}


def _conv_params(cin, cout, k):
    return cin * cout * k * k + cout


def _resnet_params(cin, cout):
    return (2 * cin + _conv_params(cin, cout, 3) + 2 * cout + _conv_params(cout, cout, 3)
            + (_conv_params(cin, cout, 1) if cin != cout else 0))


def _mid_params(c):
    return 2 * _resnet_params(c, c) + 2 * c + 4 * (c * c + c)


def params_by_hand(cfg):
    """config.param_count before #34."""
    ch, L, C, d = cfg.block_out_channels, cfg.layers_per_block, cfg.latent_channels, cfg.token_dim
    n = len(ch)
    enc = _conv_params(cfg.in_channels, ch[0], 3)
    for i in range(n):
        cin, cout = ch[max(i - 1, 0)], ch[i]
        enc += _resnet_params(cin, cout) + (L - 1) * _resnet_params(cout, cout) + (_conv_params(cout, cout, 3) if i < n - 1 else 0)
    enc += _mid_params(ch[-1]) + 2 * ch[-1] + _conv_params(ch[-1], 2 * C, 3)
    quant = _conv_params(2 * C, 2 * C, 1) + _conv_params(C, C, 1)
    m = cfg.mlp_dim
    block = 3 * 2 * d + 4 * (d * d + d) + (d * m + m) + (m * d + d)
    inpe = (2 * cfg.inpe_fourier_dim * d + d) + (d * d + d)
    dec = _conv_params(C, ch[-1], 3) + _conv_params(ch[-1], d, 3) + 2 * inpe + d + cfg.num_blocks * block + 2 * d
    dec += _mid_params(ch[-1])
    rev = list(reversed(ch))
    for i in range(n):
        cin, cout = rev[max(i - 1, 0)], rev[i]
        dec += _resnet_params(cin, cout) + L * _resnet_params(cout, cout) + (_conv_params(cout, cout, 3) if i < n - 1 else 0)
    dec += 2 * ch[0] + _conv_params(ch[0], cfg.in_channels, 3)
    return enc + quant + dec


def largest_by_hooks(cfg, batch, Hp, Wp, latent_side):
    """export/plan.py's largest_tensor before #34: forward hooks on every Conv2d and GroupNorm of the
    TensorRT-flavour export module (export/onnx.py ExportDecode) on the meta device."""
    from infgen.export.onnx import ExportDecode
    with torch.device("meta"):
        model = InfGen(cfg).eval()
    sizes = {}

    def hook(name):
        def record(mod, inputs, output):
            n = max([x.numel() for x in inputs if torch.is_tensor(x)] + [output.numel()])
            sizes[name] = max(sizes.get(name, 0), n)
        return record

    for name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.GroupNorm)):
            mod.register_forward_hook(hook(name))
    with torch.no_grad():
        ExportDecode(model, "tensorrt")(torch.empty(batch, cfg.latent_channels, latent_side, latent_side, device="meta"),
                                        torch.empty(Hp, Wp, device="meta"))
    name = max(sizes, key=sizes.get)
    return sizes[name], name


# ----------------------------------------------------------------------------- cost, parameters, largest tensor
@pytest.mark.parametrize("name,h,w,latent", [("paper", 1024, 1024, (64, 64)), ("paper", 2160, 3840, (64, 64)),
                                             ("paper", 4096, 4096, (128, 96)), ("tiny", 72, 40, (8, 8)),
                                             ("tiny", 17, 129, (5, 5)), ("demo", 100, 300, (7, 9))])
def test_flops_per_stage_equal_the_hand_walk_at_batch_1(name, h, w, latent):
    got = decode_flops(preset(name), h, w, latent)
    want = flops_by_hand(preset(name), h, w, latent)
    assert {k: got[k] for k in STAGES} == want and got["total"] == sum(want.values())


@pytest.mark.parametrize("kw", [{}, PRESETS["tiny"], PRESETS["demo"],
                                dict(block_out_channels=(8, 24), norm_num_groups=8, num_heads=3, num_blocks=0),
                                dict(block_out_channels=(32,), norm_num_groups=4, layers_per_block=3, mlp_ratio=1.5,
                                     max_size=64, latent_size=8),
                                dict(block_out_channels=(12, 12, 24), norm_num_groups=6, num_heads=6, latent_channels=16,
                                     inpe_fourier_dim=5)])
def test_param_count_equals_the_hand_walk(kw):
    cfg = InfGenConfig(**kw)
    assert param_count(cfg) == params_by_hand(cfg)


@pytest.mark.parametrize("name,batch,Hp,Wp,latent", [("paper", 1, 480, 480, 128), ("paper", 2, 270, 480, 128),
                                                     ("paper", 1, 100, 512, 64), ("tiny", 3, 17, 5, 9),
                                                     ("demo", 1, 40, 33, 16)])
def test_largest_tensor_equals_the_export_module_walk(name, batch, Hp, Wp, latent):
    cfg = preset(name)
    assert largest_tensor(cfg, batch, Hp, Wp, latent) == largest_by_hooks(cfg, batch, Hp, Wp, latent)


# ----------------------------------------------------------------------------- peak memory
def test_plain_peak_by_hand():
    """Two levels (16 then 8 channels), an 8x8 token grid to 16x16, fp32, torch: the peak is at the
    second up block's first GroupNorm: its 16-channel 16x16 input, the norm's output and the SiLU's,
    plus the mid block's output, which decode_grid holds while up_blocks runs. A 4x4 latent."""
    cfg = InfGenConfig(**SMALL)
    x = 16 * 16 * 16 * 4
    mid = 16 * 8 * 8 * 4
    assert predict_peak(cfg, 16, 16, latent_hw=(4, 4), detail=True) == (3 * x + mid, "decoder.up_blocks.1.resnets.0.norm1", 0)
    assert predict_peak(cfg, 16, 16, batch=3, latent_hw=(4, 4)) == 3 * (3 * x + mid)
    assert predict_peak(cfg, 16, 16, dtype=torch.bfloat16, latent_hw=(4, 4)) == (3 * x + mid) // 2


def test_triton_conv_past_int32_holds_one_band_output_at_a_time():
    """Paper preset, 4096^2 bf16, triton. conv2d_banded drops each band's output before the next
    band's conv, so the up_blocks.2 upsampler's conv (256 channels at 4096^2, bands of 2045 rows)
    holds one band output, not two, and the peak is block 3's first resnet conv2 (128 channels at
    4096^2, 2^31 elements, one past the limit: bands of conv_split_rows = 4093 rows, the first
    band's output 4093 + 1 halo rows). Live there: x (256 ch), conv1's output, the GroupNorm
    output, conv2's output (128 ch each), the first band's output, and the mid block's output that
    decode_grid holds."""
    from infgen.ref.banded import conv_split_rows
    cfg = preset("paper")
    e, W = 2, 4096
    rows = conv_split_rows(1, 128, 128, W, 3)
    assert rows == 4093
    want = e * (256 * W * W + 3 * 128 * W * W + 128 * (rows + 1) * W + 512 * 512 * 512)
    assert predict_peak(cfg, 4096, 4096, dtype=torch.bfloat16, backend="triton", detail=True) == (
        want, "decoder.up_blocks.3.resnets.0.conv2", 0)
    # two band outputs live at the upsampler's conv would have been the peak (28.18 GB)
    two_bands = e * (256 * 2048 * 2048 + 2 * 256 * W * W + (2046 + 2047) * 256 * W + 512 * 512 * 512)
    assert two_bands > want


@pytest.mark.parametrize("name,h,w,rows,dtype,batch", [("tiny", 512, 512, None, torch.float32, 1),
                                                       ("tiny", 384, 200, 8, torch.float32, 1),
                                                       ("tiny", 136, 72, None, torch.bfloat16, 2),
                                                       ("demo", 256, 520, 5, torch.float16, 1)])
def test_banded_peak_equals_the_real_band_loops(name, h, w, rows, dtype, batch):
    """predict_peak runs each banded op's first bands only; the banded ops themselves (every band,
    infgen_ref/banded.py) on the meta device, with the same flash-style attention, peak the same."""
    cfg = preset(name)
    ops = replace(banded_ops(rows, compute="meta"), cross_attention=_flash_attention, self_attention=_flash_attention)
    real = run(cfg, math.ceil(h / cfg.upscale), math.ceil(w / cfg.upscale), ops, batch=batch, dtype=dtype)
    assert predict_peak(cfg, h, w, batch, dtype, "torch", "banded", rows, detail=True) == peak(real.events)


def test_host_over_moves_large_activations_to_host():
    cfg = preset("tiny")
    dev, _, host = predict_peak(cfg, 512, 512, mode="banded", detail=True)
    assert host == 0 and predict_peak(cfg, 512, 512, mode="banded", host_over=10**12) == dev
    all_dev, _, all_host = predict_peak(cfg, 512, 512, mode="banded", host_over=0, detail=True)
    conv_out = 16 * 512 * 512 * 4  # conv_norm_out's input and every 16-channel conv output at 512^2
    assert all_dev < dev and all_host >= 2 * conv_out
    assert predict_peak(cfg, 512, 512, mode="plain", host_over=0) == predict_peak(cfg, 512, 512)  # plain: no host


def test_peak_replay_and_host_eligible_marks():
    """walk.run records allocations in order and frees them as the code drops them; peak replays."""
    cfg = InfGenConfig(**SMALL)
    marked = []

    def conv2d(conv, x):
        y = conv(x)
        if y.shape[1] == cfg.in_channels:
            mark_host_eligible(y)
            marked.append(y.untyped_storage().nbytes())
        return y

    ops = replace(TORCH_OPS, conv2d=conv2d, cross_attention=_flash_attention, self_attention=_flash_attention)
    events = run(cfg, 8, 8, ops, latent_hw=(4, 4)).events
    allocs = [ev for ev in events if ev[0] == "alloc"]
    assert marked == [3 * 16 * 16 * 4]
    assert [ev[2] for ev in allocs if ev[4]] == marked and allocs[-1][3] == "decoder.conv_out"
    assert {ev[1] for ev in events if ev[0] == "free"} == {ev[1] for ev in allocs}  # all freed by the end
    assert peak(events, host_over=marked[0])[2] == 0 and peak(events, host_over=marked[0] - 1)[2] == marked[0]


@pytest.mark.parametrize("kwargs,match", [(dict(batch=0), "batch .* 0"), (dict(dtype=torch.int8), "dtype"),
                                          (dict(host_over=-1, mode="banded"), "host_over .* -1"),
                                          (dict(latent_hw=(0, 4)), "latent height .* 0")])
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        predict_peak(preset("tiny"), 64, 64, **kwargs)


# ----------------------------------------------------------------------------- no import circles
PACKAGES = {"infgen_ref": "infgen.ref", "cli": "infgen.cli", "kernels": "infgen.kernels", "export": "infgen.export",
            "runtime": "infgen.runtime", "train": "infgen.train", "native": "infgen.native"}


def _runtime_imports(tree: ast.Module):
    """Every import statement that runs: at any depth (function-level too), except under `if TYPE_CHECKING:`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


def _import_graph() -> dict:
    modules = {}
    for folder, package in PACKAGES.items():
        for f in (ROOT / folder).rglob("*.py"):
            parts = [p for p in f.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            modules[".".join([package, *parts])] = f
    graph = {}
    for name, f in modules.items():
        here = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
        graph[name] = set()
        for node in _runtime_imports(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def test_no_import_circles():
    """No module reaches itself through imports that run (function-level ones included), so
    none needs a function-level import to dodge a circle (#34: onnx -> plan -> spec -> onnx)."""
    graph = _import_graph()
    assert graph["infgen.export.spec"] == {"infgen.export.plan"}

    def reaches(start):
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        return seen
    circles = sorted(m for m in graph if m in reaches(m))
    assert not circles, circles


def test_importing_the_reference_does_not_import_triton():
    """The walk imports FlopCounterMode (which imports triton) only when it counts FLOPs: importing
    the reference stays light, and a process may still set TRITON_INTERPRET after importing it."""
    import subprocess
    import sys
    code = "import sys, infgen.ref.config, infgen.ref.model, infgen.ref.walk; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    assert out.stdout.strip() == "False"
