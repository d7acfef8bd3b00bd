"""Server-rendered SVG charts: grouped bars (payouts per payee, volume per block range) and cumulative steps
(a payee's requested and confirmed amounts over blocks).

Pure functions from numbers to markup; every label is escaped. No JavaScript and no chart library: the page
stays readable when printed or saved. Values are integers in minor units and are drawn to scale, never rounded
into the labels (the labels carry the exact figure).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 720
BAR_HEIGHT = 220
PALETTE = ("#2f6db5", "#3a9a5b", "#c77c1e", "#8b4fb3")


@dataclass(frozen=True)
class Group:
    """One category on the x axis with one value per series."""

    label: str
    values: tuple[int, ...]
    href: str = ""


def _fmt(value: int) -> str:
    return f"{value:,}"


def _legend(series: Sequence[str], y: int) -> str:
    parts = []
    for i, name in enumerate(series):
        x = 60 + i * 160
        parts.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{PALETTE[i % len(PALETTE)]}"/>'
                     f'<text x="{x + 18}" y="{y + 11}" class="legend">{escape(name)}</text>')
    return "".join(parts)


def bars(title: str, series: Sequence[str], groups: Sequence[Group], *, unit: str = "minor units") -> Markup:
    """Grouped vertical bars; an empty chart says so instead of drawing nothing."""
    if not groups:
        return Markup(f'<p class="empty">{escape(title)}: nothing to draw yet.</p>')
    top = max((v for g in groups for v in g.values), default=0) or 1
    plot_w, left, base = WIDTH - 80, 60, BAR_HEIGHT + 30
    slot = plot_w / len(groups)
    bar_w = max(2.0, min(40.0, slot * 0.8 / max(1, len(series))))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {base + 90}" '
             f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<text x="{left}" y="16" class="chart-title">{escape(title)} ({escape(unit)})</text>',
             f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" class="axis"/>',
             f'<text x="{left - 6}" y="34" class="tick" text-anchor="end">{_fmt(top)}</text>',
             f'<text x="{left - 6}" y="{base}" class="tick" text-anchor="end">0</text>']
    for gi, group in enumerate(groups):
        x0 = left + gi * slot + (slot - bar_w * len(series)) / 2
        for si, value in enumerate(group.values):
            h = BAR_HEIGHT * value / top
            parts.append(f'<rect class="bar" x="{x0 + si * bar_w:.1f}" y="{base - h:.1f}" width="{bar_w:.1f}" '
                         f'height="{h:.1f}" fill="{PALETTE[si % len(PALETTE)]}" data-value="{value}">'
                         f'<title>{escape(group.label)} · {escape(series[si])}: {_fmt(value)}</title></rect>')
        label = escape(group.label)
        if group.href:
            label = Markup(f'<a href="{escape(group.href)}">{label}</a>')
        parts.append(f'<text x="{left + gi * slot + slot / 2:.1f}" y="{base + 14}" class="tick" '
                     f'text-anchor="end" transform="rotate(-30 {left + gi * slot + slot / 2:.1f} {base + 14})">'
                     f'{label}</text>')
    parts.append(_legend(series, base + 72))
    parts.append("</svg>")
    return Markup("".join(parts))


def steps(title: str, series: Sequence[str], points: Sequence[Sequence[tuple[int, int]]], *,
          unit: str = "minor units") -> Markup:
    """Cumulative step lines, one per series; x = block number, y = running total after that block."""
    if not any(points):
        return Markup(f'<p class="empty">{escape(title)}: nothing to draw yet.</p>')
    xs = [x for line in points for x, _ in line]
    low, high = min(xs), max(xs)
    span = max(1, high - low)
    top = max((y for line in points for _, y in line), default=0) or 1
    left, plot_w, base = 60, WIDTH - 80, BAR_HEIGHT + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {base + 60}" '
             f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<text x="{left}" y="16" class="chart-title">{escape(title)} ({escape(unit)})</text>',
             f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" class="axis"/>',
             f'<text x="{left - 6}" y="34" class="tick" text-anchor="end">{_fmt(top)}</text>',
             f'<text x="{left}" y="{base + 14}" class="tick">block {low}</text>',
             f'<text x="{left + plot_w}" y="{base + 14}" class="tick" text-anchor="end">block {high}</text>']
    for si, line in enumerate(points):
        coords, previous = [], base
        for x, y in line:
            px, py = left + plot_w * (x - low) / span, base - BAR_HEIGHT * y / top
            coords.append(f"{px:.1f},{previous:.1f} {px:.1f},{py:.1f}")
            previous = py
        if coords:
            coords.append(f"{left + plot_w:.1f},{previous:.1f}")
            parts.append(f'<polyline class="step" fill="none" stroke-width="2" stroke="{PALETTE[si % len(PALETTE)]}"'
                         f' points="{" ".join(coords)}"><title>{escape(series[si])}: {_fmt(line[-1][1])}</title>'
                         f'</polyline>')
    parts.append(_legend(series, base + 36))
    parts.append("</svg>")
    return Markup("".join(parts))


def cumulative(events: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """(block, amount) events -> (block, running total) points, one per block."""
    totals: dict[int, int] = {}
    running = 0
    for block, amount in sorted(events):
        running += amount
        totals[block] = running
    return sorted(totals.items())


def block_ranges(amounts: Sequence[tuple[int, int]], first: int, last: int, buckets: int = 12
                 ) -> list[tuple[int, int, int]]:
    """(block, amount) -> [(from_block, to_block, sum)] over `buckets` equal block ranges covering first..last."""
    if last < first:
        return []
    size = max(1, -(-(last - first + 1) // buckets))
    sums: dict[int, int] = {}
    for block, amount in amounts:
        sums[(block - first) // size] = sums.get((block - first) // size, 0) + amount
    return [(first + i * size, min(last, first + (i + 1) * size - 1), sums.get(i, 0))
            for i in range(-(-(last - first + 1) // size))]
