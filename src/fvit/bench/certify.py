"""Entry 'certify': the tightness and soundness check of the certificates (paper section 6.2), now
with results store, resume and torchrun sharding like every other entry.

Per batch, the images are certified and attacked at factor * R per property
(`fvit.certify.run_tightness`: PGD through DDS on the prediction, the top-k explanation attack
through DDS on the top-k set; success judged on fresh samples). Rows per image: one 'certificate'
row (label, predicted class, the certificate, the tightness configuration) and one row per
'<property>@<factor>' (radius, eligible, and when attacked: eps, success, confirmed, the achieved
norm, whether it is a soundness violation). The results rebuild `run_tightness`'s report from the
rows: {config, images, summary, violations, certificates}; a violation fails the run after the
report is written (`fvit.certify.tightness.raise_on_violations`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from fvit.bench import ops
from fvit.bench.engine import Experiment, RunContext, register_experiment, write_json
from fvit.bench.runner import RunOutput
from fvit.errors import FvitError
from fvit.keys import setting, split_setting
from fvit.settings import Settings
from fvit.utils import write_text_atomic

CERTIFICATE = "certificate"  # the per-image row setting

from fvit.certify.config import CertifyConfig, TightnessConfig


def tightness_report(model, dds, images, labels, ids: list[str], params: "CertifyParams", seed: int) -> dict:
    """`fvit.certify.run_tightness` on one batch; the ids key every image's noise and attack seed, so
    a row does not depend on its batch (resume, shards)."""
    from fvit.certify.tightness import run_tightness

    return run_tightness(model, dds, images, labels, certify=params.certify, tightness=params.tightness,
                         seed=seed, ids=ids)


@dataclass(frozen=True)
class CertifyParams(Settings):
    """certify: how the certificates are computed; tightness: how they are attacked."""

    certify: CertifyConfig = field(default_factory=CertifyConfig)
    tightness: TightnessConfig = field(default_factory=TightnessConfig)
    unkeyed: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.certify, CertifyConfig) or not isinstance(self.tightness, TightnessConfig):
            raise FvitError("CertifyParams: certify must be a CertifyConfig and tightness a TightnessConfig")


def factor_label(f: float) -> str:
    return str(float(f))


@register_experiment
class Certify(Experiment):
    name = "certify"
    Params = CertifyParams
    needs_dds = True
    uses_methods = False
    memo = None  # thousands of samples per image: nothing to share between calls

    def settings(self, ctx: RunContext) -> list[str]:
        t = ctx.params.tightness
        return [CERTIFICATE] + [setting(p, factor_label(f)) for p in t.properties for f in t.factors]

    def compute(self, batch: dict, bctx, ctx: RunContext) -> list[dict]:
        if not ops.labels_known(batch):
            raise FvitError("the tightness check needs labelled images (some labels are -1)")
        ids = [str(i) for i in batch["id"]]
        x, labels = batch["image"].to(ctx.device), batch["label"].to(ctx.device)
        report = tightness_report(ctx.model, ctx.dds, x, labels, ids, ctx.params, ctx.settings.run.seed)
        violations = {(v["index"], v["property"], float(v["factor"])) for v in report["violations"]}
        rows = []
        for i, (record, cert) in enumerate(zip(report["images"], report["certificates"])):
            id_ = ids[i]
            rows.append({"id": id_, "setting": CERTIFICATE, "label": record["label"],
                         "predicted_class": record["predicted_class"], "abstained": record["abstained"],
                         "certificate": cert, "tightness_config": report["config"]})
            for prop, entry in record["properties"].items():
                for f in ctx.params.tightness.factors:
                    row = {"id": id_, "setting": setting(prop, factor_label(f)), "radius": entry["radius"],
                           "eligible": entry["eligible"]}
                    attack = entry["attacks"].get(factor_label(f))
                    if attack is not None:
                        row.update(attack, violation=(record["index"], prop, float(f)) in violations)
                    rows.append(row)
        return rows

    def summarise(self, out: RunOutput, ctx: RunContext) -> dict:
        report = summarise_certify(out.rows, ctx.params.tightness)
        s = ctx.settings
        report["config"].update(dataset=s.data.spec, model=s.model.name, limit=s.data.limit,
                                denoiser=s.dds.denoiser if s.dds is not None else None)
        return report

    def tables(self, results: dict, ctx: RunContext) -> list:
        from fvit.viz.tables import Table

        rows = [[prop, float(f), r["attacked"], r["successes"], r["rate"], r["confirmed"], r["confirmed_rate"],
                 r["paper_rate"]] for prop, per in results["summary"].items() for f, r in per.items()]
        return [("certify_tightness_table", Table(
            "Attack success at factor x certified radius", ["Property", "Factor", "Attacked", "Successes", "Rate",
                                                           "Confirmed", "Confirmed rate", "Paper rate"], rows,
            digits=3, notes=[f"soundness: {len(results['violations'])} confirmed success(es) inside a certified "
                             f"radius" + (" -- a BUG" if results["violations"] else "")]))]

    def files(self, results: dict, ctx: RunContext, out_dir: Path) -> list[Path]:
        """certify_tightness.json / .md, as `fvit bench certify` always wrote them."""
        from fvit.certify.tightness import tightness_markdown

        md = out_dir / "certify_tightness.md"
        write_text_atomic(md, tightness_markdown(results))
        return [write_json(out_dir / "certify_tightness.json", results), md]

    def check(self, results: dict, ctx: RunContext) -> None:
        from fvit.certify.tightness import raise_on_violations

        raise_on_violations(results)


def summarise_certify(rows: list[dict], tightness) -> dict:
    """`run_tightness`'s report, rebuilt from the rows of every batch (ordered by image id)."""
    from fvit.certify.tightness import PAPER_SUCCESS_RATES

    certs = sorted((r for r in rows if r["setting"] == CERTIFICATE), key=lambda r: str(r["id"]))
    images, by_id = [], {}
    cert_of = {r["id"]: r["certificate"] for r in certs}
    for r in certs:
        by_id[r["id"]] = {"id": r["id"], "index": r["id"], "label": r["label"],
                          "predicted_class": r["predicted_class"], "abstained": r["abstained"], "properties": {}}
        images.append(by_id[r["id"]])
    tallies = {p: {float(f): [0, 0, 0] for f in tightness.factors} for p in tightness.properties}
    violations = []
    for r in rows:
        if r["setting"] == CERTIFICATE or r["id"] not in by_id:
            continue
        prop, factor = split_setting(r["setting"])
        entry = by_id[r["id"]]["properties"].setdefault(prop, {"radius": r["radius"], "eligible": r["eligible"],
                                                               "attacks": {}})
        if "success" not in r:
            continue
        entry["attacks"][factor] = {k: r[k] for k in ("eps", "success", "confirmed", "perturbation_norm")}
        tally = tallies[prop][float(factor)]
        tally[0] += 1
        tally[1] += int(r["success"])
        tally[2] += int(r["confirmed"])
        if r.get("violation"):
            violations.append({"index": r["id"], "property": prop, "factor": float(factor), "radius": r["radius"],
                               "perturbation_norm": r["perturbation_norm"],
                               "certificate": cert_of[r["id"]].get("certificate")})
    summary = {prop: {str(f): {"attacked": a, "successes": s, "confirmed": c,
                               "rate": (s / a) if a else None, "confirmed_rate": (c / a) if a else None,
                               "paper_rate": PAPER_SUCCESS_RATES.get(f) if prop == "prediction" else None}
                      for f, (a, s, c) in per.items()}
               for prop, per in tallies.items()}
    config = dict(certs[0]["tightness_config"]) if certs else {}
    return {"config": config, "images": images, "summary": summary, "violations": violations,
            "certificates": [r["certificate"] for r in certs]}


__all__ = ["CertifyConfig", "CertifyParams", "TightnessConfig", "summarise_certify", "tightness_report"]
