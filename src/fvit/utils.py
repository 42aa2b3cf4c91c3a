"""Small helpers shared across concerns: number parsing, seeding, device choice, image checks."""

from __future__ import annotations

import math
import os
import tempfile
from fractions import Fraction
from pathlib import Path

import torch

from fvit.errors import FvitError, InputError


def parse_number(text: str | float | int, what: str = "value", *, finite: bool = False) -> float:
    """Parse '8/255', '0.03', 0.03 -> float. Raises FvitError naming `what` on bad input (and, with
    `finite=True`, on nan / inf)."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = str(text).strip()
        try:
            value = float(Fraction(s)) if "/" in s else float(s)
        except (ValueError, ZeroDivisionError, OverflowError):
            raise FvitError(f"{what}: cannot read {text!r} as a number (use e.g. 0.03 or 8/255)") from None
    if finite and not math.isfinite(value):
        raise FvitError(f"{what}: {text!r} is not a finite number")
    return value


def available_devices() -> list[str]:
    """The torch devices that exist here: 'cpu', then 'cuda:0'.. and 'mps' when present."""
    names = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """'auto'/None -> cuda if available else cpu; otherwise the given device, which must exist here
    (FvitError naming it and the devices that exist)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    there = available_devices()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise FvitError(f"device {str(device)!r}: not a device name (devices here: auto, {', '.join(there)})") from None
    ok = (dev.type == "cpu" or (dev.type == "cuda" and f"cuda:{dev.index or 0}" in there)
          or (dev.type == "mps" and "mps" in there))
    if not ok:
        raise FvitError(f"device {str(device)!r}: not available here (devices here: auto, {', '.join(there)})")
    return dev


def module_device(module, default: torch.device | str = "cpu") -> torch.device:
    """The device of a model's first parameter: where its inputs must go (``default`` for an
    object without parameters, e.g. a test double or a parameter-free module)."""
    params = getattr(module, "parameters", None)
    param = next(iter(params()), None) if callable(params) else None
    return param.device if param is not None else torch.device(default)


def current_umask() -> int:
    """The process's umask (read from /proc where it is available: no window with a changed mask)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_error(path: str | Path, error: OSError, what: str = "") -> FvitError:
    """The one-line error of a failed write (disk full, read-only, a folder in the way)."""
    reason = error.strerror or type(error).__name__
    return FvitError(f"{what + ' ' if what else ''}{path}: cannot write it ({reason})")


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """Refuse (FvitError naming `what`) an output file name that exists as a folder, before work."""
    path = Path(path)
    if path.is_dir():
        raise FvitError(f"{what} {path}: exists as a folder; move it away or choose another output folder")
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` via a temporary file in the same folder and a rename, so a failed
    write never leaves a truncated file (and an existing one stays intact until the rename). The
    file gets the mode an ordinary ``open`` would (0666 less the umask). A failed write (disk
    full, a folder of that name, ...) raises a one-line FvitError naming the path."""
    path = Path(path)
    check_output_file(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def json_safe(value):
    """`value` with every non-finite float (nan, inf) replaced by None: JSON has no such constants."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create the output folder `path` if needed and check that files can be written in it, before
    anything is computed. FvitError naming `what` when it is a file or not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FvitError(f"{what} {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".fvit-write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise FvitError(f"{what} {path}: cannot write there ({e.strerror or type(e).__name__})") from None
    return path


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes that can still be allocated on `device`: free CUDA memory, or the kernel's
    MemAvailable on CPU (None where it cannot be read)."""
    dev = torch.device(device)
    try:
        if dev.type == "cuda":
            return int(torch.cuda.mem_get_info(dev)[0])
        if dev.type == "cpu":
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
    except (OSError, RuntimeError, ValueError, IndexError):
        pass
    return None


def dds_batch_bytes(batch: int, samples: int, hw: tuple[int, int], denoiser_size: int | None = None) -> int:
    """A rough lower bound of what one batch of DDS explanations holds at once: per sample the
    noisy / denoised / explained copies of the image (3 x 3HW floats), the denoiser's input and
    output at its own size (2 x 3s^2) and the fused maps (2HW), float32."""
    h, w = hw
    s = int(denoiser_size or max(h, w))
    return int(batch) * int(samples) * 4 * (9 * h * w + 6 * s * s + 2 * h * w)


def check_memory(need: int, what: str, device: torch.device | str = "cpu", params: tuple[str, ...] = ()) -> None:
    """FvitError naming `what` when `need` bytes exceed the memory available on `device`."""
    have = available_memory(device)
    if have is not None and need > have:
        raise FvitError(f"{what}: needs about {need / 2**30:.3g} GiB at once, more than the {have / 2**30:.3g} GiB "
                        f"available on {torch.device(device)}", params=params)


def load_torch_weights(path: str | Path, what: str = "checkpoint"):
    """`torch.load(path, weights_only=True)` on CPU; a file that holds pickled Python objects (not a
    plain state dict) or is unreadable raises a one-line CheckpointError saying how to convert it."""
    import pickle

    from fvit.errors import CheckpointError

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{what} {path}: not a plain state dict (it holds pickled Python objects, which fvit never "
            "unpickles); if you trust the file, convert it once: load it in Python yourself and save "
            "its tensors with safetensors.torch.save_file(state_dict, 'model.safetensors')") from None
    except Exception as e:  # corrupt / truncated / not a torch file
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise CheckpointError(f"{what} {path}: cannot read it ({type(e).__name__}: {first})") from None


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def check_images01(images: torch.Tensor, what: str = "images", tol: float = 0.0,
                   floating: bool = True) -> torch.Tensor:
    """Raise InputError unless `images` is a ``(B, C, H, W)`` tensor (floating point unless
    `floating=False`) with values in [0, 1], to within `tol`; returns `images`."""
    if not torch.is_tensor(images):
        raise InputError(f"{what}: expected a torch.Tensor (B, C, H, W) in [0, 1], got {type(images).__name__}")
    if images.ndim != 4 or (floating and not images.is_floating_point()):
        raise InputError(f"{what}: expected a {'float ' if floating else ''}tensor (B, C, H, W) in [0, 1], "
                         f"got shape {tuple(images.shape)} dtype {images.dtype}")
    if images.numel():
        lo, hi = (float(v) for v in images.detach().aminmax())
        if lo < -tol or hi > 1 + tol:
            raise InputError(f"{what}: pixel values must lie in [0, 1] (got range [{lo:.4g}, {hi:.4g}]); "
                             "pass images before normalisation")
    return images
