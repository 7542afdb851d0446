"""Sizes for people both ways: rdmapin.kernel.units' formatter and parser (pure)."""

from __future__ import annotations

import pytest

from rdmapin.kernel.units import human, parse_size, short

pytestmark = pytest.mark.pure


@pytest.mark.parametrize(("text", "nbytes"), [
    ("4096", 4096), ("4K", 4096), ("4k", 4096), ("2MiB", 2 << 20), ("2 MB", 2 << 20),
    ("1G", 1 << 30), ("1T", 1 << 40), ("0x1000", 4096), (" 16M ", 16 << 20)])
def test_parse_size_forms(text, nbytes):
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("text", ["", "x", "1.5G", "-4K", "4Q", "0xzz"])
def test_parse_size_refuses_with_the_forms(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_human_and_short_round_trip_exact_multiples():
    for n in (4096, 2 << 20, 1 << 30, 3 << 40):
        assert parse_size(human(n).replace(" ", "")) == n
        assert parse_size(short(n)) == n
