"""mlbook.widgets: slider_plot, live (ipywidgets) and static (pre-rendered frames in HTML)."""

import base64
import io
import json
import math
import re
from html.parser import HTMLParser

import matplotlib.image
import numpy as np
import pytest

from mlbook.widgets import SliderPlot, slider_plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
A = [0.0, 0.5, 1.0]
B = [0, 1]


def paint(fig, a, b, **_):
    """Fill the whole figure with the colour (a, b, 0.25): each frame names its own parameters."""
    fig.set_facecolor((a, b, 0.25))


def make(**kwargs):
    return slider_plot(paint, {"a": A, "b": B}, figsize=(0.5, 0.5), dpi=20, **kwargs)


def colour(png: bytes):
    return matplotlib.image.imread(io.BytesIO(png), format="png")[0, 0, :3]


class Page(HTMLParser):
    """The pieces of the static HTML the tests look at, parsed as a browser's tokenizer would."""

    def __init__(self, text):
        super().__init__()
        self.inputs, self.imgs, self.scripts, self.outputs = [], [], [], []
        self._in = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "input":
            self.inputs.append(attrs)
        elif tag == "img":
            self.imgs.append(attrs)
        elif tag in ("script", "output"):
            self._in = (tag, attrs, [])

    def handle_data(self, text):
        if self._in is not None:
            self._in[2].append(text)

    def handle_endtag(self, tag):
        if self._in is not None and tag == self._in[0]:
            item = (self._in[1], "".join(self._in[2]))
            (self.scripts if tag == "script" else self.outputs).append(item)
            self._in = None

    def payload(self):
        found = [text for attrs, text in self.scripts
                 if attrs.get("type") == "application/json" and attrs.get("class") == "mlbook-data"]
        assert len(found) == 1
        return json.loads(found[0])


# ------------------------------------------------------------------ rendering

def test_render_returns_png_bytes():
    png = make().render([0, 0])
    assert isinstance(png, bytes) and png.startswith(PNG_MAGIC)


def test_render_draws_with_the_values_at_the_index():
    sp = make()
    for i, a in enumerate(A):
        for j, b in enumerate(B):
            np.testing.assert_allclose(colour(sp.render([i, j])), [a, b, 0.25], atol=1 / 255)


def test_different_values_give_different_frames():
    sp = make()
    frames = {sp.render([i, j]) for i in range(len(A)) for j in range(len(B))}
    assert len(frames) == len(A) * len(B)


def test_frames_are_cached():
    calls = []

    def draw(fig, a, b):
        calls.append((a, b))
        paint(fig, a, b)

    sp = slider_plot(draw, {"a": A, "b": B}, figsize=(0.5, 0.5), dpi=20)
    first = sp.render([1, 0])
    assert sp.render((1, 0)) is first
    assert calls == [(0.5, 0)]


def test_figsize_dpi_and_density_set_the_pixel_size():
    sp = slider_plot(paint, {"a": A, "b": B}, figsize=(1.0, 0.5), dpi=40)
    png = sp.render([0, 0])
    assert matplotlib.image.imread(io.BytesIO(png), format="png").shape[:2] == (40, 80)
    one = slider_plot(paint, {"a": A, "b": B}, figsize=(1.0, 0.5), dpi=40, density=1)
    assert matplotlib.image.imread(io.BytesIO(one.render([0, 0])), format="png").shape[:2] == (20, 40)


def test_page_shows_the_frame_at_figsize_times_dpi_css_pixels_scaled_to_the_column():
    img = Page(slider_plot(paint, {"a": A, "b": B}, figsize=(2.0, 0.5), dpi=40).to_html()).imgs[0]
    assert (img["width"], img["height"]) == ("80", "20")
    assert "max-width:80px" in img["style"] and "width:100%" in img["style"]


def test_frames_are_palette_pngs_with_the_drawn_colour():
    png = make().render([2, 1])
    assert png[25] == 3                                  # PNG colour type 3: palette
    assert np.allclose(colour(png), (1.0, 1.0, 0.25), atol=1 / 255)


def test_sliders_are_labelled_in_words():
    html_text = make(labels={"a": "noise level"}).to_html()
    page = Page(html_text)
    assert [i["aria-label"] for i in page.inputs] == ["noise level", "b"]
    snake = Page(slider_plot(lambda fig, steps_per_level: None, {"steps_per_level": A},
                             figsize=(0.5, 0.5), dpi=20).to_html())
    assert snake.inputs[0]["aria-label"] == "steps per level"
    assert json.loads(snake.scripts[0][1])["words"] == ["steps per level"]


def test_bad_labels_and_density_are_refused():
    with pytest.raises(ValueError, match="unknown parameters"):
        make(labels={"c": "no such slider"})
    with pytest.raises(ValueError, match="density"):
        make(density=0)


# ------------------------------------------------------------------ static HTML

def test_html_has_one_range_input_per_parameter():
    sp = slider_plot(paint, {"a": A, "b": B, "c": ["x", "y", "z", "w"]}, figsize=(0.5, 0.5), dpi=20)
    page = Page(sp.to_html())
    ranges = [i for i in page.inputs if i.get("type") == "range"]
    assert [r["aria-label"] for r in ranges] == ["a", "b", "c"]
    assert [int(r["max"]) for r in ranges] == [2, 1, 3]
    assert all(r["min"] == "0" and r["step"] == "1" for r in ranges)


def test_html_payload_holds_every_combination_once():
    sp = slider_plot(paint, {"a": A, "b": B, "c": ["x", "y", "z", "w"]}, figsize=(0.5, 0.5), dpi=20)
    payload = Page(sp.to_html()).payload()
    assert len(payload["frames"]) == math.prod([len(A), len(B), 4])
    assert payload["sizes"] == [3, 2, 4]
    assert payload["names"] == ["a", "b", "c"]
    assert payload["labels"] == [["0", "0.5", "1"], ["0", "1"], ["x", "y", "z", "w"]]


def test_html_frames_are_row_major_last_slider_fastest():
    payload = Page(make().to_html()).payload()
    for k, frame in enumerate(payload["frames"]):
        i, j = np.unravel_index(k, (len(A), len(B)), order="C")
        png = base64.b64decode(frame)
        assert png.startswith(PNG_MAGIC)
        np.testing.assert_allclose(colour(png), [A[i], B[j], 0.25], atol=1 / 255)  # drawn independently
        assert png == make().render([i, j])                                           # a fresh instance


def test_html_starts_at_the_initial_values():
    sp = make(initial={"a": 1.0, "b": 1})
    page = Page(sp.to_html())
    assert [i["value"] for i in page.inputs] == ["2", "1"]
    assert [text for _, text in page.outputs] == ["1", "1"]
    src = page.imgs[0]["src"]
    assert src.startswith("data:image/png;base64,")
    np.testing.assert_allclose(colour(base64.b64decode(src.split(",", 1)[1])), [1.0, 1.0, 0.25], atol=1 / 255)


def test_html_title_is_the_alt_text():
    page = Page(make(title='density "p" & <q>').to_html())
    assert page.imgs[0]["alt"] == 'density "p" & <q>'


def test_html_is_self_contained():
    text = make().to_html()
    assert "http://" not in text and "https://" not in text
    assert len(Page(text).scripts) == 2


def test_script_tag_in_a_label_cannot_break_out():
    evil = "</script><script>alert(1)</script>"
    sp = slider_plot(lambda fig, **kw: None, {"s": [evil, "safe"], "</script>": [1, 2]},
                     figsize=(0.5, 0.5), dpi=20)
    text = sp.to_html()
    page = Page(text)
    payload = page.payload()                                   # the JSON element ends where it should
    assert payload["labels"][0] == [evil, "safe"]
    assert payload["names"] == ["s", "</script>"]
    assert len(page.scripts) == 2                              # no injected script element
    assert [text for _, text in page.outputs] == [evil, "1"]   # escaped in the visible label too
    assert "alert(1)</script>" not in text


def test_html_comment_opener_in_a_label_cannot_swallow_the_page():
    sp = slider_plot(lambda fig, **kw: None, {"s": ["<!--<script>", "ok"]}, figsize=(0.5, 0.5), dpi=20)
    text = sp.to_html()
    start = text.index('class="mlbook-data">') + len('class="mlbook-data">')
    content = text[start:re.search("</script", text[start:], re.I).start() + start]
    assert "<!--" not in content and not re.search("<script", content, re.I)


# ------------------------------------------------------------------ live view and display

def test_mimebundle_offers_html_text_and_widget_views():
    sp = make()
    bundle = sp._repr_mimebundle_()
    assert {"text/html", "text/plain", "application/vnd.jupyter.widget-view+json"} <= set(bundle)
    assert bundle["text/html"] == sp.to_html()
    assert bundle["text/plain"] == "SliderPlot('interactive figure', a[3] x b[2])"
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == sp.widget.model_id


def test_widget_has_one_slider_per_parameter_above_the_image():
    import ipywidgets

    w = make(initial={"b": 1}).widget
    sliders, image = w.children
    assert isinstance(image, ipywidgets.Image)
    assert [s.description for s in sliders.children] == ["a", "b"]
    assert [s.value for s in sliders.children] == [0, 1]
    assert [[label for label, _ in s.options] for s in sliders.children] == [["0", "0.5", "1"], ["0", "1"]]
    np.testing.assert_allclose(colour(bytes(image.value)), [0.0, 1.0, 0.25], atol=1 / 255)


def test_moving_a_live_slider_updates_the_image():
    sp = make()
    sliders, image = sp.widget.children
    sliders.children[0].value = 2
    np.testing.assert_allclose(colour(bytes(image.value)), [1.0, 0.0, 0.25], atol=1 / 255)
    sliders.children[1].value = 1
    np.testing.assert_allclose(colour(bytes(image.value)), [1.0, 1.0, 0.25], atol=1 / 255)
    assert sp.index == [2, 1]


def test_widget_is_built_once():
    sp = make()
    assert sp.widget is sp.widget


def test_slider_plot_is_the_class_shorthand():
    sp = make()
    assert isinstance(sp, SliderPlot)
    assert sp.n_frames == 6


# ------------------------------------------------------------------ bad inputs

@pytest.mark.parametrize("args, kwargs, error, match", [
    (("not callable", {"a": A}), {}, TypeError, "draw must be callable, got str"),
    ((paint, {}), {}, ValueError, "params must be a non-empty mapping"),
    ((paint, [("a", A)]), {}, ValueError, "params must be a non-empty mapping"),
    ((paint, {"a": []}), {}, ValueError, r"params\['a'\] must be a non-empty list"),
    ((paint, {"a": "abc"}), {}, ValueError, r"params\['a'\] must be a non-empty list"),
    ((paint, {"a": 3}), {}, ValueError, r"params\['a'\] must be a non-empty list"),
    ((paint, {"a": list(range(9)), "b": list(range(8))}), {}, ValueError, "72 combinations.*max_frames=64"),
    ((paint, {"a": A, "b": B}), {"max_frames": 5}, ValueError, "6 combinations.*max_frames=5"),
    ((paint, {"a": A}), {"initial": {"c": 1}}, ValueError, r"unknown parameters: \['c'\]"),
    ((paint, {"a": A}), {"initial": {"a": 0.7}}, ValueError, r"initial\['a'\]=0.7 is not one of"),
])
def test_rejects_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        slider_plot(*args, **kwargs)


@pytest.mark.parametrize("index", [[0], [0, 0, 0], [3, 0], [0, 2], [-1, 0]])
def test_render_rejects_an_index_that_does_not_fit(index):
    with pytest.raises(ValueError, match=r"does not fit the sliders' sizes \[3, 2\]"):
        make().render(index)
