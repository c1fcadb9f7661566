"""Files in and out of the runtime: latents (.npy, .pt, .safetensors) and images (PNG, JPEG).

Nothing here executes code from a file: .npy is read with allow_pickle=False, .pt only through
torch.load(weights_only=True), safetensors is data only. Nothing is read in bulk before its size
is known: a latent file's header (or zip directory) is checked against the file size and
MAX_LATENT_BYTES, an image's pixel count against MAX_IMAGE_PIXELS before its pixels are decoded.
"""
from __future__ import annotations

import math
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from infgen.ref.checks import check_out_file
from infgen.ref.model import native_array

LATENT_SUFFIXES = (".npy", ".pt", ".pth", ".safetensors")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_LATENT_BYTES = 256 * 2 ** 20     # a 4096^2 decode's latent (4 x 512 x 512 fp32) is 4 MiB per image
MAX_IMAGE_PIXELS = 2 ** 26           # 8192 x 8192; also the limit for PIL's decompression-bomb check


def _existing(path: str | Path, suffixes: tuple[str, ...], what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} path must be a str or Path, got {type(path).__name__}")
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise ValueError(f"{what} file must end in {', '.join(suffixes)}, got {str(p)!r}")
    if p.is_dir():
        raise ValueError(f"{what} path {str(p)!r} is a directory, not a file")
    if not p.is_file():
        raise FileNotFoundError(f"no such {what} file: {str(p)!r}")
    return p


def check_writable(path: str | Path, suffixes: tuple[str, ...] | None = None, what: str = "output") -> Path:
    """An output file path that can be written, checked before any work: the suffix (if given),
    an existing writable parent directory, and not itself a directory. ValueError naming it."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} path must be a str or Path, got {type(path).__name__}")
    check_out_file(path, what, suffixes)
    return Path(path)


def _npy_header(p: Path, max_bytes: int) -> None:
    """Read a .npy header only; its shape x itemsize must fit the file and max_bytes."""
    fmt = np.lib.format
    size = p.stat().st_size
    with open(p, "rb") as f:
        try:
            version = fmt.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy format version {version}")
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f)
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"{str(p)!r} is not a readable .npy file: {exc}") from exc
        offset = f.tell()
    if dtype.hasobject or dtype.kind not in "fiub":
        raise ValueError(f"{str(p)!r} must hold a plain numeric array (pickled data is refused), got dtype {dtype}")
    need = math.prod(shape) * dtype.itemsize
    if need > max_bytes:
        raise ValueError(f"{str(p)!r}: header claims shape {shape} of {dtype} ({need:,} bytes), more than the "
                         f"limit of {max_bytes:,} bytes")
    if need > size - offset:
        raise ValueError(f"{str(p)!r}: header claims shape {shape} of {dtype} ({need:,} bytes) but the file "
                         f"holds {size - offset:,} bytes of data")


def _zip_size(p: Path, max_bytes: int) -> None:
    """A torch zip file: the uncompressed size of its entries must fit max_bytes (zip bombs)."""
    if not zipfile.is_zipfile(p):
        return  # legacy torch format: bounded by the file size, checked by the caller
    try:
        with zipfile.ZipFile(p) as zf:
            total = sum(i.file_size for i in zf.infolist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{str(p)!r} is not a readable torch file: {exc}") from exc
    if total > max_bytes:
        raise ValueError(f"{str(p)!r} unpacks to {total:,} bytes, more than the limit of {max_bytes:,}")


def _pick(tensors: dict, path: Path) -> torch.Tensor:
    """The tensor under key "latent", or the only tensor of the dict."""
    if "latent" in tensors:
        t = tensors["latent"]
    elif len(tensors) == 1:
        t = next(iter(tensors.values()))
    else:
        raise ValueError(f"{str(path)!r} holds {len(tensors)} entries {sorted(map(str, tensors))[:10]}: "
                         "expected one tensor or a key named 'latent'")
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{str(path)!r}: the latent entry is a {type(t).__name__}, not a tensor")
    return t


def _safetensors_size(p: Path, max_bytes: int) -> None:
    """The tensor data of a safetensors file (file size - 8 - header length) must fit max_bytes;
    the safetensors library checks the header's offsets against the file itself."""
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
    n = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 0 <= n <= size - 8:
        raise ValueError(f"{str(p)!r} is not a readable safetensors file: header length {n} for a "
                         f"{size:,}-byte file")
    if size - 8 - n > max_bytes:
        raise ValueError(f"{str(p)!r} holds {size - 8 - n:,} bytes of tensors, more than the limit of {max_bytes:,}")


def load_latent(path: str | Path, max_bytes: int = MAX_LATENT_BYTES) -> torch.Tensor:
    """Read a latent (C, h, w) or (B, C, h, w) as stored (no dtype change, on the CPU).

    .npy: a plain array (pickled object arrays are refused); .pt/.pth: a tensor, or a dict holding
    one tensor or a "latent" key; .safetensors: the "latent" tensor or the only tensor. Files and
    what their headers claim are limited to max_bytes (ValueError before the data is read)."""
    p = _existing(path, LATENT_SUFFIXES, "latent")
    suffix = p.suffix.lower()
    size = p.stat().st_size
    if size > max_bytes + 2 ** 20:  # data plus at most 1 MiB of headers
        raise ValueError(f"{str(p)!r} is {size:,} bytes, more than the limit of {max_bytes:,} for a latent")
    if suffix == ".npy":
        _npy_header(p, max_bytes)
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as exc:  # numpy's refusal of object arrays, or a malformed header
            raise ValueError(f"{str(p)!r} is not a plain numeric .npy array (pickled data is refused): {exc}") from exc
        except (OSError, EOFError) as exc:
            raise ValueError(f"{str(p)!r} is not a readable .npy file: {exc}") from exc
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiub":
            raise ValueError(f"{str(p)!r} must hold a numeric array, got dtype {getattr(arr, 'dtype', type(arr))}")
        return torch.from_numpy(native_array(arr))  # a .npy may be big-endian
    if suffix in (".pt", ".pth"):
        _zip_size(p, max_bytes)
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(f"{str(p)!r} holds more than tensors; only weights_only torch files are read: "
                             f"{exc}") from exc
        except (RuntimeError, EOFError, OSError) as exc:
            raise ValueError(f"{str(p)!r} is not a readable torch file: {exc}") from exc
        if isinstance(obj, torch.Tensor):
            return obj
        if isinstance(obj, dict):
            return _pick(obj, p)
        raise ValueError(f"{str(p)!r} must hold a tensor or a dict of tensors, got {type(obj).__name__}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    _safetensors_size(p, max_bytes)
    try:
        return _pick(load_file(str(p)), p)
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{str(p)!r} is not a readable safetensors file: {exc}") from exc


def save_latent(latent, path: str | Path) -> Path:
    """Write a latent tensor or array to .npy, .pt/.pth or .safetensors (key "latent")."""
    p = check_writable(path, LATENT_SUFFIXES, "latent output")
    suffix = p.suffix.lower()
    if isinstance(latent, np.ndarray):
        latent = native_array(latent)
    t = torch.as_tensor(latent).detach().cpu().contiguous()
    if suffix == ".npy":
        np.save(p, t.numpy())
    elif suffix in (".pt", ".pth"):
        torch.save(t, p)
    else:
        from safetensors.torch import save_file
        save_file({"latent": t}, str(p))
    return p


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def rgb_pixels(im, path) -> np.ndarray:
    """A Pillow image -> (H, W, 3) float32 in 0..255, upright.

    EXIF orientation is applied (ImageOps.exif_transpose: a phone's portrait JPEG stays portrait).
    16-bit grayscale PNGs (modes I;16*, and I, which Pillow uses for them) are scaled by 255/65535,
    not clipped at 255 (which whitens them); an I image outside 0..65535 is refused. Palette, alpha
    (dropped: the colour channels are kept), grayscale, 1-bit, CMYK and YCbCr images go through
    Pillow's own conversion to RGB. Float (F) and other modes are a ValueError naming the mode."""
    from PIL import ImageOps
    im = ImageOps.exif_transpose(im)
    if im.mode in SIXTEEN_BIT_MODES:
        a = np.asarray(im).astype(np.float32)  # (H, W), Pillow gives the native-order values
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"{str(path)!r}: mode {im.mode} values {a.min():.0f}..{a.max():.0f} are outside the "
                             "16-bit range 0..65535")
        return np.repeat((a * (255.0 / 65535.0))[..., None], 3, axis=2)
    if im.mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "La", "CMYK", "YCbCr", "LAB", "HSV"):
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")  # Pillow's advice for palette transparency; the alpha is then dropped
        return np.asarray(im.convert("RGB"), dtype=np.float32)
    raise ValueError(f"{str(path)!r}: image mode {im.mode!r} is not supported (8- or 16-bit grayscale, RGB, "
                     "palette, CMYK or YCbCr, with or without alpha)")


def load_image(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """PNG/JPEG -> (1, 3, H, W) float32 in [-1, 1], upright (rgb_pixels: EXIF orientation applied,
    every mode and bit depth converted to RGB at full range).

    The pixel count is read from the header and checked against max_pixels before any pixel is
    decoded; Pillow's own decompression-bomb check (DecompressionBombError, and its warning, made
    an error) is turned into ValueError as well. Only PNG and JPEG decoders are tried."""
    from PIL import Image, UnidentifiedImageError
    p = _existing(path, IMAGE_SUFFIXES, "image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p, formats=("PNG", "JPEG")) as im:
                w, h = im.size
                if w < 1 or h < 1 or w * h > max_pixels:
                    raise ValueError(f"{str(p)!r} is {w}x{h} (WxH) = {w * h:,} pixels; images may have "
                                     f"1..{max_pixels:,} pixels")
                arr = rgb_pixels(im, p)  # (H, W, 3) in 0..255
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"{str(p)!r} is refused as a decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"{str(p)!r} is not a readable PNG or JPEG image: {exc}") from exc
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous() / 127.5 - 1.0  # (1, 3, H, W)


def image_to_uint8(image) -> np.ndarray:
    """(B, 3, h, w) or (3, h, w) float image in [-1, 1] (tensor or array; clamped) -> (B, h, w, 3) uint8.

    Non-finite values are a ValueError: they would be written as black pixels."""
    x = torch.from_numpy(native_array(image)) if isinstance(image, np.ndarray) else image
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor or numpy array, got {type(image).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"image must be a floating tensor in [-1, 1], got dtype {x.dtype}")
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[0] < 1 or min(x.shape[2:]) < 1:
        raise ValueError(f"image must have shape (B, 3, h, w) or (3, h, w), got {tuple(image.shape)}")
    x = x.detach().float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("image contains non-finite values (NaN or inf); refusing to write them as black")
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_image(image, path: str | Path) -> list[Path]:
    """Write (B, 3, h, w) or (3, h, w) in [-1, 1] as PNG/JPEG: path as given for one image, else
    path with _0, _1, ... suffixes. The path is checked (suffix, writable directory) first."""
    from PIL import Image
    path = check_writable(path, IMAGE_SUFFIXES, "image output")
    arrays = image_to_uint8(image)
    paths = [path] if len(arrays) == 1 else [path.with_name(f"{path.stem}_{i}{path.suffix}")
                                             for i in range(len(arrays))]
    for a, p in zip(arrays, paths):
        im = Image.fromarray(a)
        im.save(p) if p.suffix.lower() == ".png" else im.save(p, quality=95)
    return paths
