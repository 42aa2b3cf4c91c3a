"""DDS: denoised diffusion smoothing around any explanation method (Hu et al., ICML 2024).

See docs/ARCHITECTURE.md ("dds") and ../shared/FACTS.md ("DDS").
"""

from fvit.dds.core import DDS, VARIANTS, votes
from fvit.dds.explainer import DDSExplainer
from fvit.dds.factory import make_dds, make_dds_explainer
from fvit.dds.fusion import FUSIONS, fuse

__all__ = ["DDS", "DDSExplainer", "FUSIONS", "VARIANTS", "fuse", "make_dds", "make_dds_explainer", "votes"]
