"""Which model the job exports: the last stage's target classifier (FullFineTune, else the Head's linear probe),
unless another candidate is better on validation by more than the noise of the validation set, and never silently
a worse one than the job had. The held-out test set is reported beside each candidate and chooses nothing.

Why not simply the best by validation accuracy: on a small validation set the two candidates' accuracies differ
by chance by several points (on the demo's ~145 images the plain rule took the linear probe for 2 seeds of 5, and
both were 2-6 points worse on test than the fine-tuned model it passed over). So the later stage's model, the one
the recipe is built to produce (LP-FT: fine-tuning after the probe is the better model in distribution, Kumar et
al. 2022), is kept unless the evidence against it is significant: an exact one-sided McNemar test on the paired
per-image correctness of the two models on validation, at `ALPHA` shared (Bonferroni) among the alternatives.
A fine-tuning that wrecked the network (the issue's 0.500 -> 0.350, or worse) is still passed over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from graft.api.models import StageState
from graft.ledger import Ledger
from graft.uncertainty import ONLY_CANDIDATE
from graft_trainer import models, registry, scoring
from graft_trainer.sweep import better

#: The weight interpolation's candidate is an alternative to FullFineTune like LP: its alpha was itself chosen on
#: validation among 11, so it too must beat FullFineTune beyond the noise.
INTERPOLATED = "Interpolated"
#: What model.json calls the interpolation's candidate.
INTERPOLATED_NAME = "WiSE-FT interpolation of LP and FullFineTune"
#: The family-wise chance of passing over the reference when no alternative is really better.
ALPHA = 0.05
RULE = (f"the last stage's model (FullFineTune, else LP) unless another candidate is better on validation by more "
        f"than the noise: an exact one-sided McNemar test on per-image correctness, p < {ALPHA} shared among the "
        "alternatives (validation only; the test set chooses nothing)")


@dataclass(frozen=True)
class Candidate:
    stage: str
    metrics: dict[str, float]
    output: str | None = None  #: its weights; its validation predictions lie beside them
    correct: torch.Tensor | None = field(default=None, compare=False)  #: per validation image, when recorded
    #: The stage whose ledger record the candidate comes from (the interpolation's: the stage that interpolated).
    record: str | None = field(default=None, compare=False)

    @property
    def source(self) -> str:
        return self.record or self.stage

    @property
    def score(self) -> tuple[float, float]:
        return self.metrics["val_accuracy"], self.metrics["val_loss"]

    def summary(self) -> dict[str, Any]:
        keys = ("val_accuracy", "val_loss", "test_accuracy", "test_loss", "best_epoch", "alpha")
        return {"stage": self.stage, "model": name(self.stage), **{k: self.metrics[k] for k in keys
                                                                    if k in self.metrics}}


def name(stage: str) -> str:
    """What model.json calls a candidate (`StageType.candidate`)."""
    if stage == INTERPOLATED:
        return INTERPOLATED_NAME
    kind = registry.STAGES.get(stage)
    return (kind.candidate if kind else None) or stage


def _correct(output: str | None) -> torch.Tensor | None:
    if output is None:
        return None
    try:
        recorded = models.read_tensors(scoring.predictions_uri(output))
    except FileNotFoundError:  # a stage scored before the predictions were recorded
        return None
    return recorded["predicted"] == recorded["labels"]


def candidates(ledger: Ledger) -> list[Candidate]:
    """The finished stages that made a target classifier (their stage type's `candidate`) with validation figures,
    in the order they ran: the last one is the reference (what the job exports unless another candidate is
    significantly better on validation)."""
    found = []
    for rec in ledger.stages:
        kind = registry.STAGES.get(rec.type)
        if kind is None or kind.candidate is None:
            continue
        if rec.state == StageState.SUCCEEDED and {"val_accuracy", "val_loss"} <= set(rec.metrics):
            found.append(Candidate(rec.type, dict(rec.metrics), rec.output, _correct(rec.output)))
            if rec.interpolation:
                out = rec.interpolation.get("output")
                found.append(Candidate(INTERPOLATED, dict(rec.interpolation["metrics"]), out, _correct(out), rec.type))
    return found


def one_sided_p(wins: int, losses: int) -> float:
    """P(at least `wins` of `wins + losses` fair coin flips): the exact one-sided McNemar test of "the alternative
    is right where the reference is wrong more often than the reverse" on the discordant images."""
    n = wins + losses
    if n == 0 or wins == 0:
        return 1.0
    log_terms = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)
                 for k in range(wins, n + 1)]
    top = max(log_terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in log_terms))


def compare(alternative: Candidate, reference: Candidate) -> dict[str, Any]:
    """The paired test of `alternative` against `reference` on validation: images only the alternative gets right
    (`wins`), only the reference (`losses`), and the one-sided p; None figures when either has no record."""
    a, r = alternative.correct, reference.correct
    if a is None or r is None or len(a) != len(r):
        return {"stage": alternative.stage, "wins": None, "losses": None, "p": None}
    wins, losses = int((a & ~r).sum()), int((r & ~a).sum())
    return {"stage": alternative.stage, "images": len(a), "wins": wins, "losses": losses,
            "p": one_sided_p(wins, losses)}


def _acc(c: Candidate) -> str:
    return f"{c.metrics['val_accuracy']:.3f}"


def choose(found: list[Candidate]) -> tuple[Candidate, str, list[dict[str, Any]]]:
    """The candidate to export, why (in words), and the paired test of each alternative against the reference."""
    reference = [c for c in found if c.stage != INTERPOLATED][-1]
    others = [c for c in found if c is not reference]
    if not others:
        return reference, f"{name(reference.stage)} {ONLY_CANDIDATE}", []
    level = ALPHA / len(others)
    tests = [compare(c, reference) for c in others]
    if any(t["p"] is None for t in tests):
        # No per-image record (a stage scored by an older Graft): the plain rule, best by validation, as before.
        chosen = max(found, key=lambda c: (c.score[0], -c.score[1], c is reference))
        return chosen, (f"{name(chosen.stage)} has the best validation accuracy ({_acc(chosen)}; no per-image "
                        "validation record for the paired test, so the plain best by validation)"), tests
    significant = [c for c, t in zip(others, tests, strict=True) if t["wins"] > t["losses"] and t["p"] < level]
    chosen = reference
    for c in significant:
        if chosen is reference or better(c.score, chosen.score, "val_accuracy"):
            chosen = c

    def versus(c: Candidate, t: dict[str, Any]) -> str:
        return (f"{name(c.stage)} {_acc(c)} vs {_acc(reference)} on {t['images']} validation images: right where "
                f"{reference.stage} is wrong on {t['wins']}, the reverse on {t['losses']}, p = {t['p']:.3g}")

    described = "; ".join(versus(c, t) for c, t in zip(others, tests, strict=True))
    if chosen is reference:
        return reference, (f"{name(reference.stage)} kept (the last stage's model): no other candidate is better "
                           f"on validation beyond the noise (needs p < {level:.3g}): {described}"), tests
    return chosen, (f"{name(chosen.stage)} is better than {name(reference.stage)} on validation beyond the noise "
                    f"(p < {level:.3g}): {described}"), tests
