"""Plot defaults and the few drawing routines every chapter reuses."""

from __future__ import annotations

from collections.abc import Callable

import matplotlib as mpl
import torch

__all__ = ["use_style", "COLORS", "density_image", "scatter"]

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
