"""fvit: faithful Vision Transformer explanations under attack.

Implements Denoised Diffusion Smoothing (DDS, Hu et al., ICML 2024) with the corrections of the
[Re] reproduction study (Kurek et al.), as a wrapper around any ViT explanation method.
See docs/ARCHITECTURE.md for the layout.
"""

__version__ = "0.1.0"
