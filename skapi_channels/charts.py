"""Inline SVG line charts for the monitoring page: no script, nothing from outside.

One line per server process; the x axis is the last minutes, the y axis starts at
zero and ends at a round number above the highest point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 28, 24
COLOURS = ("#2b7bb9", "#d9534f", "#5cb85c", "#f0ad4e", "#8e44ad", "#16a085", "#7f8c8d")


@dataclass(frozen=True)
class Line:
    label: str
    points: Sequence[tuple[float, float]]  # (epoch seconds, value)


def nice_ceiling(value: float) -> float:
    """The least of 1, 2, 2.5, 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power  # pragma: no cover - the loop always returns


def _number(value: float) -> str:
    return f"{value:g}" if value < 10 else f"{value:,.0f}"


def line_chart(title: str, lines: Sequence[Line], start: float, end: float) -> SafeString:
    """An SVG chart of ``lines`` from ``start`` to ``end`` (epoch seconds)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = nice_ceiling(max((v for line in lines for _, v in line.points), default=0))
    span = max(end - start, 1.0)

    def x(at: float) -> float:
        return LEFT + (min(max(at, start), end) - start) / span * plot_w

    def y(value: float) -> float:
        return TOP + plot_h - value / top * plot_h

    parts = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" class="skapi-chart" role="img" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" preserveAspectRatio="xMidYMid meet" '
            f'aria-label="{escape(title)}">'
        ),
        f'<text x="{LEFT}" y="16" class="title">{escape(title)}</text>',
    ]
    for i in range(5):  # horizontal grid with the y labels
        value = top * i / 4
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            f'class="grid"/>'
            f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" class="axis" text-anchor="end">'
            f"{_number(value)}</text>"
        )
    minutes = max(1, round(span / 60))
    step = 1 if minutes <= 5 else 2 if minutes <= 10 else 5
    for minute in range(0, minutes + 1, step):  # time labels, "-N min" before now
        at = end - minute * 60
        label = gettext("now") if minute == 0 else gettext("-%d min") % minute
        parts.append(
            f'<text x="{x(at):.1f}" y="{HEIGHT - 6}" class="axis" text-anchor="middle">'
            f"{label}</text>"
        )
    for index, line in enumerate(lines):
        colour = COLOURS[index % len(COLOURS)]
        coords = " ".join(f"{x(at):.1f},{y(value):.1f}" for at, value in line.points)
        if len(line.points) == 1:
            px, py = coords.split(",")
            parts.append(f'<circle cx="{px}" cy="{py}" r="2.5" fill="{colour}"/>')
        elif line.points:
            parts.append(
                f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
        legend_x = WIDTH - RIGHT - 170 * (len(lines) - index)
        parts.append(
            f'<rect x="{legend_x}" y="7" width="10" height="10" fill="{colour}"/>'
            f'<text x="{legend_x + 14}" y="16" class="legend">{escape(line.label[:24])}</text>'
        )
    if not any(line.points for line in lines):
        parts.append(
            f'<text x="{LEFT + plot_w / 2}" y="{TOP + plot_h / 2}" class="axis" '
            f'text-anchor="middle">{escape(gettext("No heartbeat data yet"))}</text>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # every interpolated string above is escaped
