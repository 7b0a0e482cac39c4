"""Horizontal bar charts as geometry for a server-rendered inline SVG (``charts.html``).

The template draws what this computes: no JavaScript, no chart library. Labels stay text (the
template escapes them); long labels are shortened, the full text goes into the bar's tooltip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 520
BAR_HEIGHT = 18
GAP = 6
LABEL_WIDTH = 220
VALUE_WIDTH = 56
MAX_LABEL = 30


@dataclass(frozen=True)
class Bar:
    label: str
    """The label as shown (shortened to :data:`MAX_LABEL` characters)."""
    title: str
    """The full label and value (the tooltip)."""
    value: int
    y: int
    width: int
    href: str | None = None


@dataclass(frozen=True)
class BarChart:
    title: str
    bars: list[Bar]
    width: int = WIDTH
    label_width: int = LABEL_WIDTH
    bar_height: int = BAR_HEIGHT

    @property
    def height(self) -> int:
        return max(1, len(self.bars)) * (BAR_HEIGHT + GAP) + GAP


def _short(label: str) -> str:
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "\u2026"


def bar_chart(
    title: str, items: Sequence[tuple[str, int]], *, links: Sequence[str | None] = ()
) -> BarChart:
    """A chart of ``(label, value)`` items in the given order; ``links``: a URL per bar."""
    top = max((value for _, value in items), default=0)
    room = WIDTH - LABEL_WIDTH - VALUE_WIDTH
    bars = []
    for i, (label, value) in enumerate(items):
        width = round(room * value / top) if top else 0
        bars.append(
            Bar(
                label=_short(label),
                title=f"{label}: {value}",
                value=value,
                y=GAP + i * (BAR_HEIGHT + GAP),
                width=max(width, 1 if value else 0),
                href=links[i] if i < len(links) else None,
            )
        )
    return BarChart(title=title, bars=bars)


__all__ = ["Bar", "BarChart", "bar_chart"]
