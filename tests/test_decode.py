"""infgen.ref.decode: the decode written once over an op table; imports point one way."""
import ast
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from infgen.ref.decode import (STAGES, TORCH_OPS, Ops, decode_grid, mask_and_q0, stage_fns, tokens,
                               upsample_nearest2x)

ROOT = Path(__file__).resolve().parents[1]


def recording_ops(log: list) -> Ops:
    """TORCH_OPS with every call logged as (op name, module or None)."""
    def wrap(name, fn, takes_module):
        if takes_module:
            return lambda m, *a: (log.append((name, m)), fn(m, *a))[1]
        return lambda *a: (log.append((name, None)), fn(*a))[1]
    return Ops(**{f.name: wrap(f.name, getattr(TORCH_OPS, f.name), f.name in ("conv2d", "group_norm"))
                  for f in dataclasses.fields(Ops)})


def test_every_conv_and_norm_of_the_decode_goes_through_the_ops_once(tiny_model):
    """Each decoder conv and GroupNorm (and post_quant_conv) is called through ops exactly once, the
    attentions once per block and once in the mid block, the upsample once per upsampler."""
    log = []
    z = torch.randn(1, 4, 3, 4)
    with torch.no_grad():
        out = decode_grid(recording_ops(log), tiny_model, z, 3, 5)
        ref = tiny_model.decode_grid(z, 3, 5)
    assert torch.equal(out, ref)
    dec = tiny_model.decoder
    convs = [m for m in dec.modules() if isinstance(m, nn.Conv2d)] + [tiny_model.post_quant_conv]
    norms = [m for m in dec.modules() if isinstance(m, nn.GroupNorm)]
    called = {name: [m for n, m in log if n == name] for name in ("conv2d", "group_norm")}
    assert sorted(map(id, called["conv2d"])) == sorted(map(id, convs))
    assert sorted(map(id, called["group_norm"])) == sorted(map(id, norms))
    count = {name: sum(n == name for n, _ in log) for name in ("upsample2x", "cross_attention", "self_attention")}
    n_up = sum(b.upsamplers is not None for b in dec.up_blocks)
    assert count == {"upsample2x": n_up, "cross_attention": len(dec.blocks), "self_attention": 1}


def test_an_op_table_changes_the_decode():
    """The functions really run the table's ops: a conv2d that returns zeros zeroes the image."""
    from infgen.ref.config import preset
    from infgen.ref.model import InfGen
    torch.manual_seed(0)
    m = InfGen(preset("tiny")).eval()
    zero = dataclasses.replace(TORCH_OPS, conv2d=lambda conv, x: torch.zeros_like(conv(x)))
    with torch.no_grad():
        out = decode_grid(zero, m, torch.randn(1, 4, 3, 3), 2, 2)
        assert out.abs().max() == 0
        assert decode_grid(TORCH_OPS, m, torch.randn(1, 4, 3, 3), 2, 2).abs().max() > 0


def test_stages_compose_to_decode_grid(tiny_model):
    torch.manual_seed(1)
    z = torch.randn(2, 4, 5, 3)
    fns = stage_fns(TORCH_OPS, tiny_model, 4, 7)
    assert tuple(n for n, _ in fns) == STAGES
    with torch.no_grad():
        x = z
        for _, fn in fns:
            x = fn(x)
        assert torch.equal(x, decode_grid(TORCH_OPS, tiny_model, z, 4, 7))
    assert x.shape == (2, 3, 32, 56)


def test_precomputed_mask_and_q0_give_the_same_decode(tiny_model):
    torch.manual_seed(2)
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        mask, q0 = mask_and_q0(tiny_model, 5, 3)
        assert mask.shape == q0.shape == (1, 15, tiny_model.config.token_dim)
        a = decode_grid(TORCH_OPS, tiny_model, z, 5, 3, mask, q0)
        b = decode_grid(TORCH_OPS, tiny_model, z, 5, 3)
    assert torch.allclose(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("r0,r1", [(0, 2), (2, 5), (4, 7)])
def test_tokens_of_a_row_slice_of_the_mask_are_those_rows_of_the_full_grid(tiny_model, r0, r1):
    """Distributed decode's contract: a slice of whole mask rows gives those rows of the features."""
    torch.manual_seed(3)
    Hp, Wp = 7, 5
    z = torch.randn(2, 4, 3, 4)
    with torch.no_grad():
        mask, q0 = mask_and_q0(tiny_model, Hp, Wp)
        full = tokens(TORCH_OPS, tiny_model, z, Hp, Wp)  # (2, d, 7, 5)
        part = tokens(TORCH_OPS, tiny_model, z, Hp, Wp, mask[:, r0 * Wp:r1 * Wp], q0[:, r0 * Wp:r1 * Wp])
        no_q0 = tokens(TORCH_OPS, tiny_model, z, Hp, Wp, mask[:, r0 * Wp:r1 * Wp])
    assert part.shape == (2, tiny_model.config.token_dim, r1 - r0, Wp)
    assert torch.allclose(part, full[:, :, r0:r1], atol=1e-5, rtol=0)
    assert torch.allclose(no_q0, part, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 4, 1, 9)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample_nearest2x_equals_interpolate(shape, channels_last):
    x = torch.randn(*shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = upsample_nearest2x(x)
    assert torch.equal(y, F.interpolate(x, scale_factor=2.0, mode="nearest"))
    assert y.is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- import direction
LAYERS = ["infgen_ref", "cli", "kernels", "export", "runtime"]  # each may import only those before it


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every import in a file (relative imports resolve to its own package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {folder_of(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(path.parent.name if node.level else folder_of(node.module or ""))
    return names


def folder_of(module: str) -> str:
    """The repository folder (or third-party top-level name) a module lives in: infgen.ref.x -> infgen_ref,
    infgen.runtime.cli -> runtime, os.path -> os."""
    parts = module.split(".")
    if parts[0] == "infgen" and len(parts) > 1:
        return {"ref": "infgen_ref"}.get(parts[1], parts[1])
    return parts[0]


@pytest.mark.parametrize("i", range(len(LAYERS)))
def test_imports_point_one_way(i):
    """infgen_ref <- cli <- kernels <- export <- runtime: no package imports a later one."""
    pkg, later = LAYERS[i], set(LAYERS[i + 1:])
    files = sorted((ROOT / pkg).rglob("*.py"))
    assert files, f"no python files under {pkg}"
    bad = {str(f.relative_to(ROOT)): sorted(imported_packages(f) & later) for f in files}
    assert {f: b for f, b in bad.items() if b} == {}


def test_import_checker_sees_imports_inside_functions(tmp_path):
    """The checker is not blind to lazy imports (the ones most likely to go the wrong way)."""
    f = tmp_path / "pkg" / "m.py"
    f.parent.mkdir()
    f.write_text("import os\ndef g():\n    from infgen.runtime.engine import InfGenEngine\n    from . import x\n"
                 "    import infgen.ref.model\n")
    assert imported_packages(f) == {"os", "runtime", "pkg", "infgen_ref"}
