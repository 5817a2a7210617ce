"""Server-side SVG plots: the page shows them without JavaScript.

Hand-built rather than matplotlib: one small line chart does not justify a plotting stack
in the web process, and the markup stays readable (and testable) as text.
"""
from __future__ import annotations

from evo.leaderboard import GenerationPoint

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 56, 30, 40  # margins leave room for the axes' ticks and titles


def _ticks(upper: float, count: int = 4) -> list[float]:
    return [upper * i / count for i in range(count + 1)]


def generation_plot(points: list[GenerationPoint]) -> str:
    """Best speedup vs eager so far (line, left axis) and the generation's valid rate (bars,
    right axis; none where nothing was evaluated yet), from evo.leaderboard.generation_curve."""
    if not points:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{WIDTH}" height="60" role="img">'
                '<text x="8" y="30">no generation evaluated yet</text></svg>')
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    first, last = points[0].generation, points[-1].generation
    slots = last - first + 1  # one slot per generation, points at slot centres
    speedups = [p.best_speedup_eager for p in points if p.best_speedup_eager is not None]
    y_max = max(speedups + [1.0]) * 1.1

    def x(gen: float) -> float:
        return LEFT + (gen - first + 0.5) / slots * plot_w

    def y_speedup(v: float) -> float:
        return TOP + plot_h * (1 - v / y_max)

    def y_rate(v: float) -> float:
        return TOP + plot_h * (1 - v)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="best speedup and valid rate per generation">']
    bar_w = max(min(plot_w / slots * 0.6, 24), 1)
    for p in points:
        if p.valid_rate is None:
            continue
        h = plot_h * p.valid_rate
        parts.append(f'<rect class="valid-rate" x="{x(p.generation) - bar_w / 2:.1f}" y="{y_rate(p.valid_rate):.1f}" '
                     f'width="{bar_w:.1f}" height="{h:.1f}"><title>generation {p.generation}: '
                     f'{p.valid_rate:.0%} valid</title></rect>')
    for v in _ticks(y_max):
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y_speedup(v):.1f}" y2="{y_speedup(v):.1f}"/>'
                     f'<text class="tick" x="{LEFT - 6}" y="{y_speedup(v) + 4:.1f}" text-anchor="end">{v:.2f}×</text>')
    for v in _ticks(1.0):
        parts.append(f'<text class="tick" x="{LEFT + plot_w + 6}" y="{y_rate(v) + 4:.1f}">{v:.0%}</text>')
    label_every = max(1, slots // 12)  # at most ~12 generation labels
    for p in points:
        if (p.generation - first) % label_every == 0:
            parts.append(f'<text class="tick" x="{x(p.generation):.1f}" y="{TOP + plot_h + 16}" '
                         f'text-anchor="middle">{p.generation}</text>')
    line = [(x(p.generation), y_speedup(p.best_speedup_eager)) for p in points if p.best_speedup_eager is not None]
    if line:
        coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in line)
        parts.append(f'<polyline class="best-speedup" points="{coords}"/>')
        for p in points:
            if p.best_speedup_eager is not None:
                parts.append(f'<circle class="best-speedup" cx="{x(p.generation):.1f}" cy="{y_speedup(p.best_speedup_eager):.1f}" r="3">'
                             f'<title>generation {p.generation}: best {p.best_speedup_eager:.3f}× vs eager</title></circle>')
    parts.append(f'<text class="axis" x="{LEFT + plot_w / 2}" y="{HEIGHT - 4}" text-anchor="middle">generation</text>'
                 f'<text class="axis speedup-label" x="4" y="12">best speedup vs eager</text>'
                 f'<text class="axis rate-label" x="{WIDTH - 4}" y="12" text-anchor="end">valid rate</text>')
    parts.append("</svg>")
    return "".join(parts)
