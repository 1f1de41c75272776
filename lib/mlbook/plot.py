"""Plot defaults and the few drawing routines every chapter reuses."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import matplotlib as mpl
import torch

__all__ = ["use_style", "COLORS", "density_image", "scatter", "bars"]

COLORS = ["#1f5fa8", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d6a9f"]

_STYLE = {
    "figure.figsize": (7.0, 3.2),
    "figure.dpi": 90,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": mpl.cycler(color=COLORS),
    "font.size": 11,
    "legend.frameon": False,
    "image.cmap": "viridis",
}


def use_style() -> None:
    """Apply the book's matplotlib defaults (idempotent).

    In a notebook, figures are also sent at twice their pixel size with their display size
    attached ("retina"), so they stay sharp on high-density screens and when zoomed on a phone.
    """
    mpl.rcParams.update(_STYLE)
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:
        return
    if get_ipython() is not None:
        set_matplotlib_formats("retina")


def density_image(ax, log_prob: Callable[[torch.Tensor], torch.Tensor], extent=(-3, 3, -3, 3),
                  resolution: int = 200, **imshow_kwargs):
    """Show ``exp(log_prob)`` of a 2-D density on a grid over ``extent = (x0, x1, y0, y1)``."""
    x0, x1, y0, y1 = extent
    xs, ys = torch.linspace(x0, x1, resolution), torch.linspace(y0, y1, resolution)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)   # (res*res, 2)
    with torch.no_grad():
        dens = log_prob(grid).exp().reshape(resolution, resolution).cpu()
    return ax.imshow(dens.numpy(), extent=extent, origin="lower", aspect="equal", **imshow_kwargs)


def scatter(ax, x: torch.Tensor, *, s: float = 2.0, alpha: float = 0.5, **kwargs):
    """Scatter the first two columns of ``x`` (any device) with small, translucent markers."""
    x = x.detach().cpu()
    return ax.scatter(x[:, 0], x[:, 1], s=s, alpha=alpha, linewidths=0, **kwargs)


def bars(ax, series: Mapping[str, Sequence[float] | torch.Tensor], categories: Sequence[str], *,
         ylabel: str = "probability", title: str = "", legend_fontsize: float = 8) -> list:
    """Grouped bars: one group per category, one bar per named series, side by side.

    ``series`` maps a legend entry to its heights, one per category (a list, an array or a
    tensor on any device, e.g. the probabilities of several policies over the same responses);
    ``categories`` labels the groups under the x-axis. Returns the bar containers, one per series.
    """
    heights = {name: torch.as_tensor(v).detach().cpu().double().numpy() for name, v in series.items()}
    if any(len(h) != len(categories) for h in heights.values()):
        raise ValueError(f"every series needs {len(categories)} heights, one per category")
    width = 0.8 / len(heights)
    containers = []
    for i, (name, h) in enumerate(heights.items()):
        offset = (i - (len(heights) - 1) / 2) * width
        containers.append(ax.bar([k + offset for k in range(len(h))], h, width, label=name))
    ax.set_xticks(range(len(categories)), list(categories))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=legend_fontsize)
    return containers
