"""Charts of a sales report, drawn on the server by matplotlib as PNG.

The admin page embeds the PNG as a data: URL, so it needs no JavaScript
and nothing from another host.
"""

import base64
import io

from matplotlib.figure import Figure


def to_float(values):
    # Drawing coordinates only: the figures in the tables stay Decimal.
    return [float(value) for value in values]


def render_report_chart(report):
    """Return a PNG with revenue and margin by day and by resolution."""
    # Figure() without pyplot keeps no global state, so two requests in
    # threads of one process can draw at the same time.
    figure = Figure(figsize=(10, 6.5), dpi=100, layout="constrained")
    by_day, by_resolution = figure.subplots(2, 1, height_ratios=[3, 2])
    currency = report.currency.upper()

    labels = [row.label[5:] for row in report.by_day]  # MM-DD
    positions = range(len(labels))
    by_day.bar(
        positions,
        to_float(r.revenue for r in report.by_day),
        label="revenue",
        color="#4c72b0",
    )
    by_day.bar(
        positions,
        to_float(
            -(r.provider_cost + r.payment_fees + r.refunds) for r in report.by_day
        ),
        label="cost + fees + refunds",
        color="#dd8452",
    )
    by_day.plot(
        positions,
        to_float(r.margin for r in report.by_day),
        label="margin",
        color="#2a2a2a",
        marker=".",
    )
    by_day.axhline(0, color="#888888", linewidth=0.8)
    by_day.set_title(f"By day (UTC), {currency}")
    step = max(1, len(labels) // 15)
    by_day.set_xticks(list(positions)[::step], labels[::step], rotation=45, ha="right")
    by_day.legend(loc="upper left", fontsize="small")

    names = [row.label for row in report.by_resolution]
    places = range(len(names))
    width = 0.4
    by_resolution.bar(
        [p - width / 2 for p in places],
        to_float(r.revenue for r in report.by_resolution),
        width,
        label="revenue",
        color="#4c72b0",
    )
    by_resolution.bar(
        [p + width / 2 for p in places],
        to_float(r.margin for r in report.by_resolution),
        width,
        label="margin",
        color="#55a868",
    )
    by_resolution.set_xticks(list(places), names)
    by_resolution.set_title(f"By resolution, {currency}")
    by_resolution.legend(loc="upper left", fontsize="small")

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def png_data_url(png):
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
