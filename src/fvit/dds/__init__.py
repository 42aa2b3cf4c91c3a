"""DDS: denoised diffusion smoothing around any explanation method (Hu et al., ICML 2024).

`DDSConfig` (every setting, frozen) -> `DDS` (the sampler; `make_dds(config)` loads the denoiser)
-> `DDSExplainer(method, dds, fuse=...)` (the smoothed explanation; fusion is its parameter).
See docs/ARCHITECTURE.md ("dds") and ../shared/FACTS.md ("DDS").
"""

from fvit.dds.config import VARIANTS, DDSConfig
from fvit.dds.core import DDS, Smoother, as_smoother, class_counts, votes
from fvit.dds.explainer import DDSExplainer
from fvit.dds.factory import make_dds
from fvit.dds.fusion import FUSIONS, fuse
from fvit.dds.memo import DenoiseMemo
from fvit.dds.presets import DDS_PRESETS, DDSPreset, dds_preset

__all__ = ["DDS", "DDSConfig", "DDSExplainer", "DDSPreset", "DDS_PRESETS", "dds_preset", "DenoiseMemo", "FUSIONS", "Smoother", "VARIANTS", "as_smoother",
           "class_counts", "fuse", "make_dds", "votes"]
