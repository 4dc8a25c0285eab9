"""Small charts drawn on the server as inline SVG: no script, nothing to load, readable at a glance.

Every number is formatted by us and every label escaped, so a chart is safe to put in a page as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 170
LEFT, RIGHT, TOP, BOTTOM = 46, 12, 40, 22


@dataclass(frozen=True)
class Series:
    name: str
    color: str
    points: Sequence[tuple[float, float | None]]  # (x, y); y None = no data there


def nice_max(value: float) -> float:
    """A round upper bound for an axis: 1, 2 or 5 times a power of ten."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** len(str(int(value))) / 10
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    return float(10 * magnitude)


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _frame(
    x0: float, x1: float, y_max: float, unit: str, x_labels: list[tuple[float, str]]
) -> list[str]:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = []
    for fraction in (0.0, 0.5, 1.0):
        y = TOP + plot_h * (1 - fraction)
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#e3e6ee"/>'
        )
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(_fmt(y_max * fraction))}</text>"
        )
    for x, label in x_labels:
        px = LEFT + plot_w * ((x - x0) / (x1 - x0) if x1 > x0 else 1)
        anchor = "start" if px <= LEFT + 1 else "end" if px >= WIDTH - RIGHT - 1 else "middle"
        parts.append(
            f'<text x="{px:.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}">{escape(label)}</text>'
        )
    return parts


def _heading(title: str, unit: str) -> list[str]:
    return [
        f'<text x="0" y="14" class="title">{escape(title)}</text>',
        f'<text x="0" y="{TOP - 14}">{escape(unit)}</text>' if unit else "",
    ]


def _legend(series: Sequence[Series]) -> list[str]:
    """Right-aligned on the title's line."""
    parts, x = [], WIDTH - RIGHT
    for s in reversed(series):
        x -= 7 * len(s.name) + 14
        parts.append(f'<rect x="{x}" y="5" width="10" height="10" fill="{escape(s.color)}"/>')
        parts.append(f'<text x="{x + 14}" y="14">{escape(s.name)}</text>')
        x -= 12
    return parts


def _svg(title: str, parts: list[str]) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}"'
        f' xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>{"".join(parts)}</svg>'
    )


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    x0: float,
    x1: float,
    unit: str = "",
    x_labels: list[tuple[float, str]] | None = None,
) -> Markup:
    values = [y for s in series for _, y in s.points if y is not None]
    y_max = nice_max(max(values, default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = _frame(x0, x1, y_max, unit, x_labels or [])
    span = (x1 - x0) or 1.0
    for s in series:
        run: list[str] = []
        runs: list[list[str]] = [run]
        for x, y in s.points:
            if y is None:
                run = []
                runs.append(run)
                continue
            px = LEFT + plot_w * (x - x0) / span
            py = TOP + plot_h * (1 - y / y_max)
            run.append(f"{px:.1f},{py:.1f}")
        for points in runs:
            if len(points) == 1:
                cx, cy = points[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{escape(s.color)}"/>')
            elif points:
                parts.append(
                    f'<polyline fill="none" stroke="{escape(s.color)}" stroke-width="2"'
                    f' points="{" ".join(points)}"/>'
                )
    return _svg(title, _heading(title, unit) + parts + _legend(series))


def stacked_bars(
    title: str,
    series: Sequence[Series],
    *,
    x0: float,
    x1: float,
    step: float,
    unit: str = "",
    x_labels: list[tuple[float, str]] | None = None,
) -> Markup:
    """Bars of width ``step`` starting at each x, the series stacked in order."""
    totals: dict[float, float] = {}
    for s in series:
        for x, y in s.points:
            totals[x] = totals.get(x, 0.0) + (y or 0.0)
    y_max = nice_max(max(totals.values(), default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = _frame(x0, x1, y_max, unit, x_labels or [])
    span = (x1 - x0) or 1.0
    bar_w = max(plot_w * step / span - 1, 1.0)
    base: dict[float, float] = {}
    for s in series:
        for x, y in s.points:
            if not y:
                continue
            below = base.get(x, 0.0)
            height = plot_h * y / y_max
            px = LEFT + plot_w * (x - x0) / span
            py = TOP + plot_h * (1 - (below + y) / y_max)
            parts.append(
                f'<rect x="{px:.1f}" y="{py:.1f}" width="{bar_w:.1f}" height="{height:.1f}"'
                f' fill="{escape(s.color)}"><title>{escape(s.name)}: {y:g}</title></rect>'
            )
            base[x] = below + y
    return _svg(title, _heading(title, unit) + parts + _legend(series))
