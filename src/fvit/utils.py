"""Small helpers shared across concerns: number parsing, seeding, device choice, image checks."""

from __future__ import annotations

from fractions import Fraction

import torch

from fvit.errors import FvitError, InputError


def parse_number(text: str | float | int, what: str = "value") -> float:
    """Parse '8/255', '0.03', 0.03 -> float. Raises FvitError naming `what` on bad input."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip()
    try:
        return float(Fraction(s)) if "/" in s else float(s)
    except (ValueError, ZeroDivisionError):
        raise FvitError(f"{what}: cannot read {text!r} as a number (use e.g. 0.03 or 8/255)") from None


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """'auto'/None -> cuda if available else cpu; otherwise the given device."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
