"""Accuracy intervals against published values, and the small-validation rule."""

from __future__ import annotations

import pytest

from graft.stats import MIN_VALIDATION, small_validation_warning, wilson

# Wilson 95% intervals as statsmodels' proportion_confint(count, nobs, method="wilson") gives them (and Newcombe
# 1998, Table I, for 81/263: 0.2553 to 0.3662).
PUBLISHED = {
    "newcombe-81-of-263": (81, 263, 0.2553, 0.3662),
    "all-correct-of-10": (10, 10, 0.7225, 1.0),
    "none-correct-of-10": (0, 10, 0.0, 0.2775),
    "half-of-100": (50, 100, 0.4038, 0.5962),
}


@pytest.mark.parametrize("case", list(PUBLISHED), ids=list(PUBLISHED))
def test_wilson_matches_published_intervals(case):
    correct, n, low, high = PUBLISHED[case]
    interval = wilson(correct / n, n)
    assert (round(interval.low, 4), round(interval.high, 4)) == (low, high)


def test_small_validation_splits_are_called_out_with_what_to_change():
    warning = small_validation_warning(12)
    assert warning is not None and "12 examples" in warning and "spec.data.validationSplit" in warning
    assert small_validation_warning(MIN_VALIDATION) is None


@pytest.mark.parametrize("accuracy, n", [(1.2, 10), (0.5, 0)])
def test_impossible_inputs_are_refused(accuracy, n):
    with pytest.raises(ValueError):
        wilson(accuracy, n)
