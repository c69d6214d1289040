"""Kubernetes quantities read the way the API server reads them (k8s.io/apimachinery resource.ParseQuantity)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from graft.api.models import parse_quantity

VALUES = [
    pytest.param("4Gi", Decimal(4 * 2**30), id="binary-si"),
    pytest.param("1.5Gi", Decimal(3 * 2**29), id="fractional-binary-si"),
    pytest.param("500m", Decimal("0.5"), id="milli"),
    pytest.param("100n", Decimal("1e-7"), id="nano"),
    pytest.param("3u", Decimal("3e-6"), id="micro"),
    pytest.param("2k", Decimal(2000), id="kilo"),
    pytest.param("1E", Decimal(10**18), id="bare-E-is-exa"),
    pytest.param("1e3", Decimal(1000), id="exponent"),
    pytest.param("2E+2", Decimal(200), id="signed-exponent"),
    pytest.param("1e-3", Decimal("0.001"), id="negative-exponent"),
    pytest.param(".5", Decimal("0.5"), id="leading-dot"),
    pytest.param("5.", Decimal(5), id="trailing-dot"),
    pytest.param("+1", Decimal(1), id="plus-sign"),
    pytest.param("-2Mi", Decimal(-2 * 2**20), id="minus-sign"),
    pytest.param(7, Decimal(7), id="integer"),
]


@pytest.mark.parametrize(("quantity", "value"), VALUES)
def test_value(quantity, value):
    assert parse_quantity(quantity) == value


@pytest.mark.parametrize("quantity", ["", "Gi", "1ki", "1 Gi", "1.2.3", "1Ki2", "1e1.5", "1EE", "--1", "99e999999"])
def test_not_a_quantity(quantity):
    with pytest.raises(ValueError, match=r"not a Kubernetes quantity|out of range"):
        parse_quantity(quantity)
