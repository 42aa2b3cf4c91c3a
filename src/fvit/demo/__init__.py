"""The embedded demo: a generated benchmark world, a small ViT and a small DDPM trained on it on first
use (cached), and `fvit demo`, which runs the papers' experiment on it end to end on a CPU.

This is a top layer: it may import every other part of fvit; nothing imports it.
"""

from fvit.demo.settings import DemoSettings, get_settings

__all__ = ["DemoSettings", "get_settings"]
