"""Photo folders as multi-scale pyramids, the sampler's discrete target scales and uint8 images,
and the licence lookup of scripts/fetch_photos.py."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from infgen.train.data import generated_image
from infgen.train.photos import folder_photos, image_files, load_pyramid
from infgen.train.trainer import CropSampler, parse_args

ROOT = Path(__file__).resolve().parents[1]


def _write(path, w, h, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def test_pyramid_levels_sizes_and_dtype(tmp_path):
    _write(tmp_path / "a.png", 600, 404)
    levels = load_pyramid(tmp_path / "a.png", (1, 2, 4))
    assert [tuple(t.shape) for t in levels] == [(3, 404, 600), (3, 202, 300)]  # 1/4: 101 px < 128, left out
    assert all(t.dtype == torch.uint8 for t in levels)
    full = np.asarray(Image.open(tmp_path / "a.png"))
    assert torch.equal(levels[0], torch.from_numpy(full.copy()).permute(2, 0, 1))
    with pytest.raises(ValueError, match="pyramid"):
        load_pyramid(tmp_path / "a.png", (0, 2))


def test_folder_photos_recursive_and_excludes_held_out(tmp_path):
    _write(tmp_path / "pkg" / "x.png", 300, 300, 1)
    _write(tmp_path / "pkg" / "sub" / "y.jpg", 256, 300, 2)
    _write(tmp_path / "pkg" / "coffee.png", 300, 300, 3)
    (tmp_path / "pkg" / "notes.txt").write_text("not an image")
    assert [p.name for p in image_files([tmp_path])] == ["coffee.png", "y.jpg", "x.png"]
    imgs = folder_photos([tmp_path], pyramid=(1, 2), exclude={"coffee"})
    assert sorted(tuple(t.shape) for t in imgs) == [(3, 150, 128), (3, 150, 150), (3, 300, 256), (3, 300, 300)]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        folder_photos([tmp_path / "nowhere"])
    with pytest.raises(ValueError, match="no images"):
        folder_photos([tmp_path / "pkg" / "sub"], exclude={"y"})


def test_sampler_discrete_scales_and_uint8_images():
    img = (generated_image(0, 256) * 255).round().to(torch.uint8)
    s = CropSampler([img], [], batch_size=2, grid_min=4, grid_max=4, seed=0, scales=(1, 2, 4))
    seen = set()
    for _ in range(40):
        x, y, (Th, Tw, oy, ox, wh, ww) = s.sample(max_scale=4.0, window=32)
        seen.add(Th / 4)
        assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1 and y.shape == (2, 3, 8 * wh, 8 * ww)
    assert seen == {1.0, 2.0, 4.0}
    x, _, (Th, Tw, *_) = s.sample(max_scale=1.0, window=32)  # stage 1: native size
    assert (Th, Tw) == (4, 4)
    # a flat uint8 image comes out at the same value as its float twin
    flat = torch.full((3, 64, 64), 51, dtype=torch.uint8)
    x, _, _ = CropSampler([flat], [], 1, 3, 3, seed=0).sample(1.0, 3)
    assert torch.allclose(x, torch.full_like(x, 51 / 255 * 2 - 1), atol=1e-5)
    with pytest.raises(ValueError, match="scales"):
        CropSampler([img], [], 1, 3, 3, scales=(0.5, 2))


@pytest.mark.parametrize("real", [True, False])
def test_real_targets_come_from_images_that_hold_them(real):
    """At 4x on a 4-token grid the target is 128 px: a 64 px image (value 0.2) would have to be
    upscaled, a 256 px one (value 0.8) holds it. With real_targets every target is from the large
    image; without, the small one is drawn too (and its target is an upscale)."""
    small, large = torch.full((3, 64, 64), 0.2), torch.full((3, 256, 256), 0.8)
    s = CropSampler([small, large], [], batch_size=4, grid_min=4, grid_max=4, seed=0, scales=(4,),
                    real_targets=real)
    means = []
    for _ in range(10):
        _, y, (Th, Tw, *_) = s.sample(max_scale=4.0, window=32)
        assert (Th, Tw) == (16, 16)
        means += [round((v.mean().item() + 1) / 2, 2) for v in y]
    assert set(means) == ({0.8} if real else {0.2, 0.8})


def test_cli_photo_options(tmp_path):
    a = parse_args(["--out-dir", str(tmp_path), "--scales", "1", "2", "4", "--pyramid", "1", "2", "--photo-dir", "d1",
                    "d2", "--photo-fraction", "0.9"])
    assert a.scales == (1.0, 2.0, 4.0) and a.pyramid == (1, 2) and a.photo_dir == ("d1", "d2")
    for bad in (["--scales", "1", "8"], ["--scales", "one"], ["--scales", "1,2"], ["--pyramid", "1,2"],
                ["--photo-fraction", "1.5"]):
        with pytest.raises(SystemExit):
            parse_args(["--out-dir", str(tmp_path), *bad])


def _fetch_module():
    spec = importlib.util.spec_from_file_location("fetch_photos", ROOT / "scripts" / "fetch_photos.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_licence_lookup():
    f = _fetch_module()
    dep5 = ("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
            "Files: *\nCopyright: someone\nLicense: GPL-2+\n\n"
            "Files: desktop/Ubuntu-*-no-logo.png\n other/x.png\nCopyright: 2014 G\nLicense: CC-BY-SA-4.0\n")
    assert f.dep5_licence(dep5, "desktop/Ubuntu-Cold-no-logo.png") == "CC-BY-SA-4.0"
    assert f.dep5_licence(dep5, "other/x.png") == "CC-BY-SA-4.0"
    assert f.dep5_licence(dep5, "nature/Aqua.jpg") == "GPL-2+"
    assert f.dep5_licence("not dep5", "a.png") is None
    free = (" - adwaita*\n - Chmiri.jpg:\n   Copyright 2011 J\n   Licensed under Creative Commons BY-SA 3.0.\n"
            " - Stones.jpg:\n   Licensed under Creative Commons Attribution 2.0 License.\n"
            "Licenses:\n   under the terms of the GNU General Public License ... either version 2 of the License\n")
    assert f.freeform_licence(free, "adwaita-d.webp") == "Creative Commons BY-SA 3.0"
    assert f.freeform_licence(free, "Stones.jpg") == "Creative Commons Attribution 2.0 License"
    assert f.freeform_licence(free, "grid-l.webp").startswith("GPL-2+")


def test_kde_wallpapers_take_the_largest_image_of_each(tmp_path):
    """KDE's layout (<Name>/contents/images/<W>x<H>.<ext>): one image per wallpaper, the largest,
    named after the wallpaper, with its path in the upstream tree (for the DEP-5 lookup)."""
    f = _fetch_module()
    for name, files in {"Path": ("1920x1080.jpg", "2560x1600.jpg", "720x1440.jpg"), "Kite": ("1280x800.png",),
                        "Empty": ("README",)}.items():
        d = tmp_path / name / "contents" / "images"
        d.mkdir(parents=True)
        for fn in files:
            (d / fn).write_bytes(b"")
    got = f.kde_wallpapers(tmp_path)
    assert [(p.name, n, rel) for p, n, rel in got] == [
        ("1280x800.png", "Kite", "Kite/contents/images/1280x800.png"),
        ("2560x1600.jpg", "Path", "Path/contents/images/2560x1600.jpg")]
    assert f.kde_wallpapers(tmp_path / "missing") == []


def test_init_fine_tunes_from_a_checkpoint(tmp_path, tiny_model):
    from infgen.train.trainer import Trainer
    from infgen.ref.weights import save_checkpoint
    import copy
    model = copy.deepcopy(tiny_model)  # the fixture is shared: change a copy
    model.config.scaling_factor = 0.77
    save_checkpoint(model, tmp_path / "ckpt")
    a = parse_args(["--init", str(tmp_path / "ckpt"), "--out", str(tmp_path / "run"), "--preset", "demo"])
    t = Trainer(a)
    assert t.model.config.block_out_channels == model.config.block_out_channels  # not the demo preset's
    assert t.model.config.scaling_factor == 0.77 and t.model.training
    ref = model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in t.model.state_dict().items())  # no logvar re-init either
    with pytest.raises(FileNotFoundError):
        Trainer(parse_args(["--init", str(tmp_path / "none"), "--out", str(tmp_path / "run2")]))
