"""Prices computed on the server from dimensions the server measured."""

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings

from sellmyimages import shopsettings

CENT = Decimal("0.01")
MEGAPIXEL = Decimal(1_000_000)


@dataclass(frozen=True)
class Quote:
    resolution: str
    factor: int
    output_width: int
    output_height: int
    output_megapixels: Decimal
    credits: Decimal
    provider_cost: Decimal
    markup_percentage: Decimal
    price: Decimal
    currency: str

    def as_dict(self):
        return {
            "resolution": self.resolution,
            "output_width": self.output_width,
            "output_height": self.output_height,
            "output_megapixels": str(self.output_megapixels),
            "credits": str(self.credits),
            "price": str(self.price),
            "currency": self.currency,
        }


def parse_factor(resolution):
    """Return the integer factor of a resolution such as "4x"."""
    if not isinstance(resolution, str) or not resolution.endswith("x"):
        raise ValueError(f"Resolution {resolution!r} is not of the form '4x'.")
    digits = resolution[:-1]
    if not digits.isdigit() or int(digits) < 2:
        raise ValueError(f"Resolution {resolution!r} is not of the form '4x'.")
    return int(digits)


def calculate_quote(
    width,
    height,
    resolution,
    *,
    markup_percentage=None,
    credits_per_megapixel=None,
    cost_per_credit=None,
    min_price=None,
    currency=None,
):
    """Price an upscale of a width x height image at `resolution`.

    credits = ceil(output megapixels x credits per megapixel); the provider
    cost is credits x cost per credit, and the customer pays the cost plus
    the markup, rounded half-up to the cent and never below the payment
    provider's minimum charge.
    """
    if markup_percentage is None:
        markup_percentage = current_markup_percentage()
    if credits_per_megapixel is None:
        credits_per_megapixel = settings.SMI_CREDITS_PER_MEGAPIXEL
    if cost_per_credit is None:
        cost_per_credit = settings.SMI_COST_PER_CREDIT
    if min_price is None:
        min_price = settings.SMI_MIN_PRICE
    if currency is None:
        currency = settings.SMI_CURRENCY

    factor = parse_factor(resolution)
    output_width = width * factor
    output_height = height * factor
    megapixels = Decimal(output_width * output_height) / MEGAPIXEL
    credits = Decimal(math.ceil(megapixels * Decimal(credits_per_megapixel)))
    provider_cost = credits * Decimal(cost_per_credit)
    markup = Decimal(markup_percentage)
    price = (provider_cost * (1 + markup / 100)).quantize(CENT, rounding=ROUND_HALF_UP)
    price = max(price, Decimal(min_price).quantize(CENT, rounding=ROUND_HALF_UP))
    return Quote(
        resolution=resolution,
        factor=factor,
        output_width=output_width,
        output_height=output_height,
        output_megapixels=megapixels,
        credits=credits,
        provider_cost=provider_cost,
        markup_percentage=markup,
        price=price,
        currency=currency,
    )


def current_markup_percentage():
    return shopsettings.get().markup_percentage


def max_output_megapixels(engine=None):
    """Return the largest output, in megapixels, that `engine` may produce."""
    if engine is None:
        engine = settings.SMI_UPSCALERS[0]
    limits = settings.SMI_ENGINE_MAX_MEGAPIXELS
    return limits.get(engine, limits["local"])


def available_quotes(width, height):
    """Return a quote for each allowed resolution the engine can produce."""
    limit = Decimal(max_output_megapixels())
    config = shopsettings.get()
    quotes = []
    for resolution in config.resolutions:
        quote = calculate_quote(
            width, height, resolution, markup_percentage=config.markup_percentage
        )
        if quote.output_megapixels <= limit:
            quotes.append(quote)
    return quotes


def to_minor_units(amount):
    """Convert a Decimal amount in a two-decimal currency to integer cents."""
    return int((Decimal(amount) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
