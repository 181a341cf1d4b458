"""Bar charts drawn on the server as SVG: the console's templates draw what these compute.

Every chart is shown with a table of the same numbers, so it needs no script and a
screen reader loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bar:
    """One bar: its place, its size and what it stands for."""

    x: float
    y: float
    width: float
    height: float
    label: str
    value: int
    #: Where the bar's label sits, and whether to print it (crowded axes show every few).
    label_x: float
    show_label: bool


@dataclass(frozen=True)
class Tick:
    """One horizontal grid line with its value."""

    y: float
    value: int


@dataclass(frozen=True)
class BarChart:
    """A vertical bar chart, sized in SVG user units."""

    title: str
    description: str
    width: int
    height: int
    plot_left: float
    plot_bottom: float
    bars: list[Bar]
    ticks: list[Tick]


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (at least 1)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def bar_chart(
    title: str,
    description: str,
    points: list[tuple[str, int]],
    *,
    width: int = 720,
    height: int = 240,
    label_every: int = 1,
) -> BarChart:
    """Lay out `points` (label, value) as bars over a scale that starts at zero."""
    left, right, top, bottom = 48.0, 8.0, 12.0, 28.0
    plot_width = width - left - right
    plot_height = height - top - bottom
    ceiling = nice_ceiling(max((value for _, value in points), default=0))
    slot = plot_width / max(1, len(points))
    bars = []
    for index, (label, value) in enumerate(points):
        bar_height = plot_height * value / ceiling
        x = left + index * slot + slot * 0.15
        bars.append(
            Bar(
                x=round(x, 2),
                y=round(top + plot_height - bar_height, 2),
                width=round(slot * 0.7, 2),
                height=round(bar_height, 2),
                label=label,
                value=value,
                label_x=round(left + index * slot + slot / 2, 2),
                show_label=index % label_every == 0,
            )
        )
    ticks = [
        Tick(y=round(top + plot_height - plot_height * part / 4, 2), value=ceiling * part // 4)
        for part in range(5)
    ]
    return BarChart(
        title=title,
        description=description,
        width=width,
        height=height,
        plot_left=left,
        plot_bottom=top + plot_height,
        bars=bars,
        ticks=ticks,
    )
