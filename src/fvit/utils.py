"""Small helpers shared across concerns: number parsing, seeding, device choice."""

from __future__ import annotations

from fractions import Fraction

import torch

from fvit.errors import FvitError


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
