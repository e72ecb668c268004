from decimal import Decimal

import pytest

from sellmyimages.jobs.pricing import available_quotes, calculate_quote, to_minor_units


def test_seed_example_16_credits_at_500_percent():
    # 1000x1000 at 8x is 64 output megapixels: 16 credits at 0.25 per MP.
    quote = calculate_quote(
        1000,
        1000,
        "8x",
        markup_percentage=Decimal("500"),
        credits_per_megapixel=Decimal("0.25"),
        cost_per_credit=Decimal("0.04"),
        min_price=Decimal("0.50"),
        currency="usd",
    )
    assert quote.credits == Decimal("16")
    assert quote.provider_cost == Decimal("0.64")
    assert quote.price == Decimal("3.84")
    assert isinstance(quote.price, Decimal)


def test_credits_round_up():
    # 451x300 at 4x is 2.1648 MP -> 0.5412 credits -> 1 credit.
    quote = calculate_quote(451, 300, "4x")
    assert quote.output_width == 1804
    assert quote.output_height == 1200
    assert quote.credits == Decimal("1")


def test_minimum_price_applies():
    quote = calculate_quote(100, 100, "4x", min_price=Decimal("0.50"))
    # 1 credit x 0.04 x 6 = 0.24, under the minimum charge.
    assert quote.price == Decimal("0.50")


def test_price_rounds_half_up_to_the_cent():
    quote = calculate_quote(
        1000, 1000, "8x", markup_percentage=Decimal("12.5"), min_price=Decimal("0")
    )
    # 0.64 x 1.125 = 0.72 exactly; 0.64 x 1.0078125 = 0.645 rounds up to 0.65.
    assert quote.price == Decimal("0.72")
    quote = calculate_quote(
        1000, 1000, "8x", markup_percentage=Decimal("0.78125"), min_price=Decimal("0")
    )
    assert quote.price == Decimal("0.65")


def test_resolution_over_engine_limit_not_offered(settings):
    settings.SMI_ENGINE_MAX_MEGAPIXELS = {"local": 100}
    settings.SMI_UPSCALERS = ["local"]
    # 2000x1500 -> 4x is 48 MP (offered), 8x is 192 MP (over 100).
    offered = [quote.resolution for quote in available_quotes(2000, 1500)]
    assert offered == ["4x"]


def test_minor_units_are_integers():
    assert to_minor_units(Decimal("3.84")) == 384
    assert to_minor_units(Decimal("0.50")) == 50


@pytest.mark.parametrize("resolution", ["4", "x", "1x", "four", "", "4.5x"])
def test_malformed_resolution_raises(resolution):
    with pytest.raises(ValueError):
        calculate_quote(100, 100, resolution)
