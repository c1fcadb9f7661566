"""Row-sharded decode over gloo: halo-exchange conv, all-reduced GroupNorm and gathered attention
against the single-process ops; the whole decode at 2 and 3 ranks against the plain decode."""
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from infgen.runtime import distributed as D


def _shard(x, world, rank, scale=1):
    r0, r1 = D.split_rows(x.shape[2] // scale, world)[rank]
    return x[:, :, r0 * scale:r1 * scale]


def _ops_worker(x, conv_state, norm_state, qkv):
    """On each rank: the sharded ops on this rank's rows; returns the gathered results."""
    rank, world = dist.get_rank(), dist.get_world_size()
    conv = nn.Conv2d(x.shape[1], 5, 3, padding=1)
    conv.load_state_dict(conv_state)
    norm = nn.GroupNorm(2, x.shape[1], eps=1e-6)
    norm.load_state_dict(norm_state)
    xs = _shard(x, world, rank)
    with torch.no_grad():
        c = D.all_gather_rows(D.conv2d(conv, xs), 2)
        g = D.all_gather_rows(D.group_norm(norm, xs, True), 2)
        q, k, v = qkv
        n = q.shape[2]
        r0, r1 = D.split_rows(n, world)[rank]
        a = D.all_gather_rows(D.self_attention(q[:, :, r0:r1], k[:, :, r0:r1], v[:, :, r0:r1]), 2)
    return c, g, a


def test_split_rows_odd_and_bad():
    assert D.split_rows(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert D.split_rows(3, 3) == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError, match="2 token-grid rows over 3 ranks"):
        D.split_rows(2, 3)


def _ops_case(world, H):
    """Inputs of the sharded-ops check for H rows: (x, conv, norm, (q, k, v))."""
    torch.manual_seed(world * 10 + H)
    x = torch.randn(2, 4, H, 6) * 2 + 1
    conv = nn.Conv2d(4, 5, 3, padding=1)
    norm = nn.GroupNorm(2, 4, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    q, k, v = (torch.randn(2, 1, 11, 8) for _ in range(3))
    return x, conv, norm, (q, k, v)


def _decode_worker(h, w, z):
    from infgen.runtime.engine import resolve_model
    return D.decode_distributed(resolve_model("tiny"), z, h, w)


def _world_worker(ops_inputs, decode_args):
    """One process group runs every check of its world size: the sharded ops on each input, then the
    whole decode (one spawn per world size: each spawn costs a few seconds of process start)."""
    return [_ops_worker(*a) for a in ops_inputs], _decode_worker(*decode_args)


@pytest.mark.parametrize("world,rows,h,w", [(2, (5,), 72, 40), (3, (7, 3), 56, 33)])
def test_sharded_ops_and_decode_equal_single_process(world, rows, h, w):
    """The sharded ops (halo conv, all-reduced GroupNorm + SiLU, gathered attention) at `rows` token
    rows on every rank equal the single-process ops; the whole decode with odd row splits (9 rows
    over 2 ranks, 7 over 3), batch 2: rank 0's image == the plain decode, the other ranks return None."""
    from infgen.ref import decode as Dec
    from infgen.ref.model import token_grid
    from infgen.runtime.engine import resolve_model
    cases = [_ops_case(world, H) for H in rows]
    torch.manual_seed(world)
    z = torch.randn(2, 4, 5, 6)
    res = D.launch(_world_worker, world, [(x, conv.state_dict(), norm.state_dict(), qkv) for x, conv, norm, qkv in cases],
                   (h, w, z), timeout=240)
    assert len(res) == world
    with torch.no_grad():
        for ops, _ in res:
            assert len(ops) == len(cases)
            for (c, g, a), (x, conv, norm, (q, k, v)) in zip(ops, cases):
                torch.testing.assert_close(c, conv(x), atol=1e-6, rtol=1e-5)
                torch.testing.assert_close(g, F.silu(norm(x)), atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(a, F.scaled_dot_product_attention(q, k, v), atol=1e-6, rtol=1e-5)
    images = [img for _, img in res]
    assert all(img is None for img in images[1:])
    model = resolve_model("tiny")
    with torch.inference_mode():
        ref = Dec.decode_grid(Dec.TORCH_OPS, model, z, *token_grid(h, w, model.config))[:, :, :h, :w]
    assert images[0].shape == ref.shape == (2, 3, h, w)
    assert (images[0] - ref).abs().max().item() <= 1e-5


def test_torchrun_entry_point_writes_the_plain_decode(tmp_path):
    """torchrun --nproc-per-node 2 -m infgen.runtime.distributed with decode's flags (--preset, several
    --size, --device, --dtype, -o): rank 0 writes, per size, the same PNG as the engine."""
    import os
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from infgen.runtime.engine import InfGenEngine
    z = np.random.default_rng(3).standard_normal((4, 8, 8)).astype("float32")
    np.save(tmp_path / "z.npy", z)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "infgen.runtime.distributed",
           str(tmp_path / "z.npy"), "--size", "40x56", "24x32", "--preset", "tiny", "--device", "cpu",
           "--dtype", "fp32", "-o", str(tmp_path / "d.png")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    engine = InfGenEngine("tiny")
    for w, h in ((40, 56), (24, 32)):
        got = np.asarray(Image.open(tmp_path / f"d_{w}x{h}.png")).astype(int)
        want = InfGenEngine.to_uint8(engine.decode(z, h, w))[0].astype(int)
        assert got.shape == want.shape == (h, w, 3)
        assert np.abs(got - want).max() <= 1  # rounding to uint8 of values equal within 1e-5
    assert sorted(p.name for p in tmp_path.glob("d*.png")) == ["d_24x32.png", "d_40x56.png"]


def test_entry_point_user_errors_are_one_line_before_any_rank_starts(tmp_path, capsys):
    """A bad size, device or output path: one `error:` line and exit status 2, no process group."""
    import numpy as np

    from infgen.runtime.distributed import main
    np.save(tmp_path / "z.npy", np.zeros((4, 8, 8), "float32"))
    z = str(tmp_path / "z.npy")
    for argv, match in (([z, "--size", "40x99999", "--preset", "tiny"], "99999"),
                        ([z, "--size", "40x56", "--preset", "tiny", "--device", "cuda:1"], "'cuda:1'"),
                        ([z, "--size", "40x56", "--preset", "tiny", "-o", str(tmp_path / "x.gif")], "x.gif")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
