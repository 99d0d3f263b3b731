import matplotlib.pyplot as plt
import pytest

from reidlab.lessons.widgets import Slider, slider_plot


def _draw_factory(calls):
    def draw(temperature, k):
        calls.append((temperature, k))
        fig, ax = plt.subplots()
        ax.set_title(f"{temperature} {k}")
        return fig

    return draw


def test_static_figure_uses_the_defaults():
    calls = []
    sp = slider_plot(_draw_factory(calls), interactive=False, temperature=Slider(0.05, 0.01, 1.0, log=True), k=Slider(6, 1, 20))
    assert calls == [(0.05, 6)]
    assert sp.sliders == {}


def test_moving_a_slider_redraws_with_the_new_value():
    pytest.importorskip("ipywidgets")
    calls = []
    sp = slider_plot(_draw_factory(calls), interactive=True, temperature=Slider(0.05, 0.01, 1.0, log=True), k=Slider(6, 1, 20))
    assert type(sp.sliders["k"]).__name__ == "IntSlider"
    assert type(sp.sliders["temperature"]).__name__ == "FloatLogSlider"
    sp.sliders["k"].value = 9
    assert calls[-1] == (0.05, 9)
    sp.sliders["temperature"].value = 0.1
    assert calls[-1][1] == 9 and abs(calls[-1][0] - 0.1) < 1e-9


def test_bad_sliders_are_clear_errors():
    with pytest.raises(ValueError, match="outside"):
        Slider(5, 0, 1)
    with pytest.raises(ValueError, match="min > 0"):
        Slider(0.5, 0, 1, log=True)
    with pytest.raises(ValueError, match="at least one"):
        slider_plot(lambda: None)
    with pytest.raises(TypeError, match="return its matplotlib Figure"):
        slider_plot(lambda x: None, interactive=False, x=Slider(1, 0, 2))


def test_float_slider_readout_shows_every_step():
    pytest.importorskip("ipywidgets")
    assert Slider(0.005, 0.0, 0.03, step=0.001).widget("drift").readout_format == ".3f"
    assert Slider(0.5, 0.0, 1.0, step=0.1).widget("m").readout_format == ".2f"
