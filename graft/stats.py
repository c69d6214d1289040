"""How much an accuracy measured on n examples can be trusted: Wilson score intervals and the small-split rule.

Wilson's interval (Wilson 1927; Brown, Cai and DasGupta 2001 recommend it over the normal "Wald" interval) stays
inside [0, 1] and keeps close to its nominal coverage for the small n and the accuracies near 0 or 1 that few-shot
transfer produces, where the Wald interval collapses to zero width."""

from __future__ import annotations

import math
from dataclasses import dataclass

#: z for a two-sided 95% interval.
Z95 = 1.959963984540054

#: A validation split smaller than this cannot rank a sweep's settings or choose the exported stage: at 50%
#: accuracy its 95% interval is wider than +-10 points (n=96 gives +-9.8), wider than the gaps it must tell apart.
MIN_VALIDATION = 100


@dataclass(frozen=True)
class Interval:
    """An accuracy with its 95% Wilson interval, from `correct` of `n` examples."""

    accuracy: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.accuracy:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"

    def to_json(self) -> dict[str, float | int]:
        return {"accuracy": self.accuracy, "low": self.low, "high": self.high, "n": self.n}


def wilson(accuracy: float, n: int, z: float = Z95) -> Interval:
    """The Wilson score interval of an accuracy measured on `n` examples (n >= 1)."""
    if n < 1:
        raise ValueError(f"an interval needs at least one example, got n={n}")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be within [0, 1], got {accuracy}")
    z2 = z * z
    centre = (accuracy + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Interval(accuracy, max(0.0, centre - half), min(1.0, centre + half), n)


def small_validation_warning(n: int) -> str | None:
    """The warning for a validation split too small for a sweep or export choice to mean anything, else None."""
    if n >= MIN_VALIDATION:
        return None
    half = wilson(0.5, n).high - 0.5 if n else 0.5
    return (f"the validation split has {n} examples (95% interval about +-{half * 100:.0f} points at 50% accuracy): "
            f"the sweep's choice and the exported stage are mostly noise below {MIN_VALIDATION}; raise "
            "spec.data.validationSplit (or give spec.data.validation) or label more examples")
