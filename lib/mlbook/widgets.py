"""The book's one widget helper: a figure driven by sliders, alive with or without a kernel.

``slider_plot(draw, {"mu": [...], "n": [...]})`` returns an object that Jupyter and Colab show as
ipywidgets sliders above a live image, and that a static HTML page (the built book, which has
no kernel) shows as plain ``<input type="range">`` sliders switching between frames rendered in
advance for every combination of values. Both views draw with the same ``draw`` function.

Frames are drawn at ``density`` times the display resolution (sharp on high-density screens),
stored as palette PNGs (a quarter of the bytes of full-colour ones for line art), and scaled
to the width of the column. Sliders are labelled in words: ``labels={"T": "temperature"}``;
without a label a name's underscores become spaces.

The HTML build must prefer the ``text/html`` representation over the widget view; the book's
``_config.yml`` does that with myst-nb's ``nb_mime_priority_overrides``.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["SliderPlot", "slider_plot"]

# The script finds its own container, so several widgets can share a page.
_SCRIPT = """(function () {
  var root = document.currentScript.parentElement;
  var data = JSON.parse(root.querySelector("script.mlbook-data").textContent);
  var img = root.querySelector("img.mlbook-frame");
  var inputs = root.querySelectorAll("input.mlbook-range");
  function update() {
    var flat = 0, parts = [];
    for (var k = 0; k < inputs.length; k++) {
      var i = parseInt(inputs[k].value, 10);
      flat = flat * data.sizes[k] + i;
      inputs[k].nextElementSibling.textContent = data.labels[k][i];
      parts.push(data.words[k] + " = " + data.labels[k][i]);
    }
    img.src = "data:image/png;base64," + data.frames[flat];
    img.alt = data.title + ": " + parts.join(", ");
    root.setAttribute("data-frame", String(flat));
  }
  for (var k = 0; k < inputs.length; k++) { inputs[k].addEventListener("input", update); }
  update();
})();"""


def _png(fig: Figure) -> bytes:
    """The figure as a palette PNG: 256 colours chosen by a fast octree, zlib level 6.

    The canvas's pixels go straight to the quantiser (no full-colour PNG in between); for the
    book's line art this is about three times faster than a median-cut palette with an
    exhaustive zlib search, for files of the same size.
    """
    from PIL import Image

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    image = Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(out, format="png",
                                                                     compress_level=6)
    return out.getvalue()


def _label(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class SliderPlot:
    """Figure of a few discrete parameters; see the module docstring.

    Args:
        draw: ``draw(fig, **values)`` draws on the empty ``matplotlib.figure.Figure`` it is given.
        params: parameter name -> the values its slider steps through (at least one each).
        initial: starting value per parameter (default: each list's first value).
        labels: parameter name -> the words its slider is labelled with (default: the name,
            underscores read as spaces).
        figsize, dpi: size of every frame on the page, in inches and CSS pixels per inch.
        density: pixels drawn per CSS pixel (2 is sharp on phones and high-density screens).
        layout: matplotlib layout engine of each frame's figure ("constrained" keeps titles
            and axis labels inside the frame; None leaves the layout to ``draw``).
        title: short description used as the image's alt text.
        max_frames: limit on the number of combinations rendered for the static page.
    """

    def __init__(self, draw: Callable[..., None], params: Mapping[str, Sequence], *,
                 initial: Mapping[str, object] | None = None,
                 labels: Mapping[str, str] | None = None, figsize=(8.0, 3.2), dpi: int = 80,
                 density: float = 2.0, layout: str | None = "constrained",
                 title: str = "interactive figure", max_frames: int = 64):
        if not callable(draw):
            raise TypeError(f"draw must be callable, got {type(draw).__name__}")
        if not isinstance(params, Mapping) or not params:
            raise ValueError("params must be a non-empty mapping of name -> list of values")
        self.names = [str(k) for k in params]
        self.values = []
        for name, vals in params.items():
            if isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence) or len(vals) == 0:
                raise ValueError(f"params[{name!r}] must be a non-empty list of values, got {vals!r}")
            self.values.append(list(vals))
        self.n_frames = math.prod(len(v) for v in self.values)
        if self.n_frames > max_frames:
            raise ValueError(f"params give {self.n_frames} combinations, more than max_frames={max_frames}; "
                             "use fewer values per slider or raise max_frames")
        initial = dict(initial or {})
        unknown = set(initial) - set(self.names)
        if unknown:
            raise ValueError(f"initial names unknown parameters: {sorted(unknown)}")
        self.index = []
        for name, vals in zip(self.names, self.values):
            if name in initial:
                if initial[name] not in vals:
                    raise ValueError(f"initial[{name!r}]={initial[name]!r} is not one of params[{name!r}]")
                self.index.append(vals.index(initial[name]))
            else:
                self.index.append(0)
        labels = dict(labels or {})
        unknown = set(labels) - set(self.names)
        if unknown:
            raise ValueError(f"labels names unknown parameters: {sorted(unknown)}")
        self.words = [str(labels.get(n, n.replace("_", " "))) for n in self.names]
        if not density > 0:
            raise ValueError(f"density must be positive, got {density!r}")
        self.draw, self.figsize, self.dpi, self.title = draw, figsize, int(dpi), str(title)
        self.density, self.layout = float(density), layout
        self._cache: dict[tuple[int, ...], bytes] = {}
        self._widget = None

    # ---------------------------------------------------------------- rendering
    def render(self, index: Sequence[int]) -> bytes:
        """PNG bytes of the frame at ``index`` (one position per slider), cached."""
        key = tuple(int(i) for i in index)
        if len(key) != len(self.values) or any(not 0 <= i < len(v) for i, v in zip(key, self.values)):
            raise ValueError(f"index {key} does not fit the sliders' sizes {[len(v) for v in self.values]}")
        if key not in self._cache:
            fig = Figure(figsize=self.figsize, dpi=self.dpi * self.density, layout=self.layout)
            FigureCanvasAgg(fig)
            with warnings.catch_warnings():     # a draw that lays itself out replaces the engine
                warnings.filterwarnings("ignore", "The figure layout has changed to tight")
                self.draw(fig, **{n: v[i] for n, v, i in zip(self.names, self.values, key)})
            self._cache[key] = _png(fig)
        return self._cache[key]

    def to_html(self) -> str:
        """Self-contained HTML: range inputs, every frame as base64 PNG, a small script; no kernel, no network."""
        grid = itertools.product(*(range(len(v)) for v in self.values))      # row-major, last slider fastest
        frames = [base64.b64encode(self.render(ix)).decode("ascii") for ix in grid]
        data = {"names": self.names, "words": self.words, "labels": [[_label(x) for x in v] for v in self.values],
                "sizes": [len(v) for v in self.values], "frames": frames, "title": self.title}
        # No "<" may reach the page inside the script element ("</script>", "<!--" would end or
        # derail it); JSON reads the escapes back as the same characters.
        payload = json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        controls = "".join(
            f'<label class="mlbook-control">{html.escape(word)} '
            f'<input class="mlbook-range" type="range" min="0" max="{len(vals) - 1}" step="1" value="{i}"'
            f' aria-label="{html.escape(word)}">'
            f'<output class="mlbook-value">{html.escape(_label(vals[i]))}</output>'
            f'</label>'
            for word, vals, i in zip(self.words, self.values, self.index))
        first = frames[self._flat(self.index)]
        width, height = (round(x * self.dpi) for x in self.figsize)
        return (f'<div class="mlbook-slider">'
                f'<div class="mlbook-controls">{controls}</div>'
                f'<img class="mlbook-frame" width="{width}" height="{height}" '
                f'style="width:100%;max-width:{width}px;height:auto" alt="{html.escape(self.title)}" '
                f'src="data:image/png;base64,{first}">'
                f'<script type="application/json" class="mlbook-data">{payload}</script>'
                f'<script>{_SCRIPT}</script></div>')

    def _flat(self, index: Sequence[int]) -> int:
        flat = 0
        for i, vals in zip(index, self.values):
            flat = flat * len(vals) + i
        return flat

    # ---------------------------------------------------------------- live view
    @property
    def widget(self):
        """The ipywidgets view (built on first use): one slider per parameter above an image."""
        if self._widget is None:
            import ipywidgets as w

            width = round(self.figsize[0] * self.dpi)
            image = w.Image(value=self.render(self.index), format="png",
                            layout=w.Layout(width=f"{width}px", max_width="100%"))
            sliders = [w.SelectionSlider(options=[(_label(x), j) for j, x in enumerate(vals)], value=i,
                                         description=word, continuous_update=False,
                                         style={"description_width": "initial"})
                       for word, vals, i in zip(self.words, self.values, self.index)]

            def update(_change=None):
                self.index = [s.value for s in sliders]
                image.value = self.render(self.index)

            for s in sliders:
                s.observe(update, names="value")
            self._widget = w.VBox([w.HBox(sliders, layout=w.Layout(flex_flow="row wrap")), image])
        return self._widget

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = dict(self.widget._repr_mimebundle_() or {})
        bundle["text/html"] = self.to_html()
        bundle["text/plain"] = repr(self)
        return bundle

    def __repr__(self) -> str:
        sizes = " x ".join(f"{n}[{len(v)}]" for n, v in zip(self.names, self.values))
        return f"SliderPlot({self.title!r}, {sizes})"


def slider_plot(draw: Callable[..., None], params: Mapping[str, Sequence], **kwargs) -> SliderPlot:
    """Shorthand for :class:`SliderPlot`; display the result (last line of a cell) to show it."""
    return SliderPlot(draw, params, **kwargs)
