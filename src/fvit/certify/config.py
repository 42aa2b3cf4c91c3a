"""The settings of certification and of its tightness check, as frozen values.

`CertifyConfig` says how a faithful region is certified (Algorithm 2 with the [Re] corrections:
sample counts, confidence, top-k size, norm, protocol, headline certificate family, map source);
`TightnessConfig` says how the certificates are attacked afterwards. Both are built once (the CLI
parses strings such as ``'8/255'`` and builds them; the library takes numbers), passed whole to
`fvit.certify.certify` / `fvit.certify.tightness.run_tightness`, and recorded whole in their
results (`to_dict()`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fvit.certify.radius import LINF_CONVERSIONS, NORMS, topk_k0
from fvit.certify.stats import PROTOCOLS, protocol_uses_selection
from fvit.errors import FvitError, InputError
from fvit.registry import Registry
from fvit.settings import Settings, check_choice, check_int, check_number, set_field

#: Default explanation method giving the attention vector (the paper's Z: CLS attention, last block).
DEFAULT_ATTENTION = "raw_attention"

#: Certificate families by name: whether each is a certificate at the stated confidence.
CERTIFICATES: Registry[bool] = Registry("certificate")
CERTIFICATES.register("gaussian", True, aliases=("tight", "cohen", "neyman-pearson"))
CERTIFICATES.register("renyi", True, aliases=("renyi-exact",))
CERTIFICATES.register("renyi-re", False, aliases=("re",))
CERTIFICATES.register("renyi-hu", False, aliases=("hu",))

#: Default DDS samples drawn per denoising call (a memory knob; the totals are n0 and n).
DEFAULT_MC_BATCH = 32

#: Default attack radii of the tightness check, as multiples of the certified radius.
FACTORS = (0.9, 1.0, 1.5, 2.0)
#: What the tightness check can attack: the smoothed prediction and the certified top-k set.
PROPERTIES = ("prediction", "topk")
#: "exact": gradients through ``dds.denoise_differentiable``; "bpda": the straight-through
#: estimator around ``dds.denoise`` (for denoisers without a usable autograd path); "auto" = exact
#: (every `fvit.dds.Smoother` has a differentiable path).
GRADIENT_MODES = ("auto", "exact", "bpda")
#: "own": each property is attacked at its own certified radius (the soundness check);
#: "region": both at the region radius min(prediction, top-k) (the paper's protocol).
RADIUS_CHOICES = ("own", "region")


def attention_name(attention: Any) -> str:
    """The results key of a map source: a registered method name as given, a method instance's
    ``spec``, or a callable's ``__name__``."""
    if isinstance(attention, str):
        return attention
    spec = getattr(attention, "spec", None)
    if isinstance(spec, str):
        return spec
    return getattr(attention, "__name__", type(attention).__name__)


def _resolve(owner: str, field: str, registry: Registry, value: Any) -> str:
    """``value`` resolved to its canonical name in ``registry``; an `InputError` naming ``field``."""
    if not isinstance(value, str):
        raise InputError(f"{owner}: {field} must be a name, got {value!r}", params=(field,))
    try:
        return registry.resolve(value)
    except FvitError as e:
        raise InputError(f"{owner}: {field}: {e}", params=(field,)) from None


def _check_attention(owner: str, attention: Any) -> None:
    """A registered explanation method name, a method instance, or a callable (model, images) ->
    Explanation / maps. Names are checked here, so a typo fails before any sampling."""
    if isinstance(attention, str):
        from fvit.explain import METHODS

        _resolve(owner, "attention", METHODS, attention)
    elif not callable(attention):
        raise InputError(f"{owner}: attention must be a method name, a method or a callable, "
                         f"got {type(attention).__name__}", params=("attention",))


@dataclass(frozen=True)
class CertifyConfig(Settings):
    """How a faithful region is certified (`fvit.certify.core` describes the algorithm).

    k, beta: the top-k set and the overlap it must keep (k0 = floor((1 - beta) k) + 1 swaps break it).
    alpha: the failure probability of the whole certificate (split in halves between the prediction
        and the top-k bounds).
    n0: selection samples (two-stage protocols; ignored by ``one_stage``); n: estimation samples.
    norm: 'l2' | 'linf'; linf_conversion: 'sqrt_d' (R / sqrt(d), standard) | 'paper' (R / d).
    protocol: 'two_stage' (Cohen et al.) | 'two_stage_bonferroni' | 'one_stage'.
    certificate: the headline family: 'gaussian' | 'renyi' (certificates) | 'renyi-re' |
        'renyi-hu' (the papers as published, not certificates). Every family is computed anyway.
    attention: the map source: a registered explanation method name, a method instance or a
        callable (model, images01) -> Explanation / maps (recorded by `attention_name`). The
        'renyi' top-k radius needs a source whose maps are distributions by construction
        (``distribution`` True on the method, or set on the callable); n/a (None) otherwise.
    mc_batch: DDS samples per denoising call when the DDS is built for this certification: see
        `dds_samples` (certify itself draws with the DDS it is given, ``dds.samples`` per call).
    max_batch: images per classifier / explanation forward (None: ``dds.max_batch``).
    """

    k: int = 10
    beta: float = 0.8
    alpha: float = 0.001
    n0: int = 100
    n: int = 1000
    norm: str = "l2"
    linf_conversion: str = "sqrt_d"
    protocol: str = "two_stage"
    certificate: str = "gaussian"
    attention: Any = DEFAULT_ATTENTION
    mc_batch: int = DEFAULT_MC_BATCH
    max_batch: int | None = None

    def __post_init__(self) -> None:
        own = "CertifyConfig"
        set_field(self, "k", check_int(own, "k", self.k, lo=1))
        set_field(self, "beta", check_number(own, "beta", self.beta, lo=0.0, hi=1.0, open_lo=True))
        alpha = check_number(own, "alpha", self.alpha, lo=0.0, hi=1.0, open_lo=True)
        if alpha >= 1:
            raise InputError(f"{own}: alpha must be < 1, got {self.alpha!r}", params=("alpha",))
        set_field(self, "alpha", alpha)
        set_field(self, "n0", check_int(own, "n0", self.n0, lo=0))
        set_field(self, "n", check_int(own, "n", self.n, lo=1))
        check_choice(own, "norm", self.norm, NORMS)
        set_field(self, "linf_conversion", _resolve(own, "linf_conversion", LINF_CONVERSIONS, self.linf_conversion))
        set_field(self, "protocol", _resolve(own, "protocol", PROTOCOLS, self.protocol))
        if protocol_uses_selection(self.protocol) and self.n0 < 1:
            raise InputError(f"{own}: protocol {self.protocol!r} needs n0 >= 1 selection samples "
                             f"(or protocol='one_stage')", params=("n0",))
        set_field(self, "certificate", _resolve(own, "certificate", CERTIFICATES, self.certificate).replace("_", "-"))
        _check_attention(own, self.attention)
        set_field(self, "mc_batch", check_int(own, "mc_batch", self.mc_batch, lo=1))
        set_field(self, "max_batch", check_int(own, "max_batch", self.max_batch, lo=1, allow_none=True))

    @property
    def k0(self) -> int:
        """The fewest top-k replacements that break the overlap beta (`fvit.certify.radius.topk_k0`)."""
        return topk_k0(self.k, self.beta)

    @property
    def uses_selection(self) -> bool:
        """Whether the protocol draws the n0 selection samples."""
        return protocol_uses_selection(self.protocol)

    @property
    def dds_samples(self) -> int:
        """m, the DDS samples per denoising call of a DDS built for this certification:
        ``min(mc_batch, max(n, n0))``. Certification draws n0 and n samples in calls of m each (the
        last call's surplus is dropped), so m above max(n, n0) would only waste denoising, and
        ``mc_batch`` caps the memory of one call. The command line builds its DDS with this m."""
        return min(self.mc_batch, max(self.n, self.n0))

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready; the map source by its name (`attention_name`)."""
        return {**super().to_dict(), "attention": attention_name(self.attention)}


@dataclass(frozen=True)
class TightnessConfig(Settings):
    """How certified radii are attacked (`fvit.certify.tightness` describes the check).

    factors: attack radii as multiples of the certified radius R.
    properties: what is attacked: 'prediction' (PGD on the smoothed classifier) and / or 'topk'
        (the top-k explanation attack through DDS).
    attack_steps: iterations per attack; step_size: None (the attack's preset for the norm), a
        preset name of `fvit.attacks.STEP_SIZES` or a positive number (pixel units).
    eot: DDS draws per step of the top-k attack.
    check_samples: fresh DDS samples judging each attack (None: the certificate's n).
    alpha_check: the confidence level at which a success is confirmed (Clopper-Pearson).
    radius: 'own' (each property at its own radius: the soundness check) | 'region' (the paper).
    gradient: 'auto' (= 'exact') | 'exact' | 'bpda' (`GRADIENT_MODES`).
    """

    factors: tuple[float, ...] = FACTORS
    properties: tuple[str, ...] = PROPERTIES
    attack_steps: int = 20
    step_size: float | str | None = None
    eot: int = 2
    check_samples: int | None = None
    alpha_check: float = 0.001
    radius: str = "own"
    gradient: str = "auto"

    def __post_init__(self) -> None:
        own = "TightnessConfig"
        factors = tuple(check_number(own, "factors", f, lo=0.0, open_lo=True) for f in _sequence(own, "factors",
                                                                                                 self.factors))
        if not factors:
            raise InputError(f"{own}: factors must not be empty", params=("factors",))
        set_field(self, "factors", factors)
        properties = tuple(check_choice(own, "properties", p, PROPERTIES)
                           for p in _sequence(own, "properties", self.properties))
        if not properties or len(set(properties)) != len(properties):
            raise InputError(f"{own}: properties must be distinct names among {', '.join(PROPERTIES)}, "
                             f"got {list(properties)}", params=("properties",))
        set_field(self, "properties", properties)
        set_field(self, "attack_steps", check_int(own, "attack_steps", self.attack_steps, lo=1))
        set_field(self, "step_size", _step_size(own, self.step_size))
        set_field(self, "eot", check_int(own, "eot", self.eot, lo=1))
        set_field(self, "check_samples", check_int(own, "check_samples", self.check_samples, lo=1, allow_none=True))
        alpha = check_number(own, "alpha_check", self.alpha_check, lo=0.0, hi=1.0, open_lo=True)
        if alpha >= 1:
            raise InputError(f"{own}: alpha_check must be < 1, got {self.alpha_check!r}", params=("alpha_check",))
        set_field(self, "alpha_check", alpha)
        check_choice(own, "radius", self.radius, RADIUS_CHOICES)
        check_choice(own, "gradient", self.gradient, GRADIENT_MODES)

    @property
    def gradient_mode(self) -> str:
        """The gradient actually used: 'exact' or 'bpda'."""
        return "bpda" if self.gradient == "bpda" else "exact"


def _sequence(owner: str, field: str, value: Any) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise InputError(f"{owner}: {field} must be a tuple, got {value!r}", params=(field,))
    return tuple(value)


def _step_size(owner: str, value: Any) -> float | str | None:
    """None, a preset name of `fvit.attacks.STEP_SIZES`, or a positive number."""
    if value is None:
        return None
    if isinstance(value, str):
        from fvit.attacks.registry import STEP_SIZES

        if value not in STEP_SIZES:
            raise InputError(f"{owner}: step_size must be a number or a preset ({', '.join(STEP_SIZES.names())}), "
                             f"got {value!r} (strings such as '1/255' are parsed by the command line)",
                             params=("step_size",))
        return value
    return check_number(owner, "step_size", value, lo=0.0, open_lo=True)

