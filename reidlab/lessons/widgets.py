"""Sliders that are an extra, never a requirement (introduced in notebook 00).

Every slider in the series wraps a *pure* drawing function ``draw(**values) -> Figure``.
:func:`slider_plot` calls it once with the default values and displays that figure as a
normal output, so GitHub, nbval and a headless ``make run`` all see a figure. When the
notebook runs in a live kernel, the sliders are shown above that figure and moving one
redraws the figure *in place* (an IPython display handle), so a learner sees one figure
that follows the sliders.

Widgets need ``ipywidgets >= 8`` installed in the kernel's environment, with
JupyterLab >= 4 (if sliders show up as text such as ``FloatSlider(value=...)``, the
kernel and JupyterLab live in different environments; see the README).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import ipywidgets as w
import matplotlib.pyplot as plt
from IPython import get_ipython
from IPython.display import display


@dataclass(frozen=True)
class Slider:
    """A slider's range; ``value`` is the default the static figure is drawn with.

    ``log=True`` makes a logarithmic slider (min/max given in real units, e.g. a
    temperature from 0.01 to 10). Integer-valued ranges (all of value/min/max/step
    ints) give an integer slider.
    """

    value: float
    min: float
    max: float
    step: float | None = None
    label: str | None = None
    log: bool = False

    def __post_init__(self) -> None:
        if not self.min <= self.value <= self.max:
            raise ValueError(f"slider default {self.value} lies outside [{self.min}, {self.max}]")
        if self.log and self.min <= 0:
            raise ValueError("a logarithmic slider needs min > 0")

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) for v in (self.value, self.min, self.max)) and isinstance(
            self.step or 1, int
        )

    def widget(self, name: str):
        """The matching ipywidgets slider (updates on release, so slow figures stay usable)."""
        desc = self.label or name
        common = dict(description=desc, continuous_update=False, style={"description_width": "initial"})
        if self.log:
            return w.FloatLogSlider(
                value=self.value,
                base=10,
                min=math.log10(self.min),
                max=math.log10(self.max),
                step=self.step or 0.05,
                **common,
            )
        if self.is_int:
            return w.IntSlider(value=self.value, min=self.min, max=self.max, step=self.step or 1, **common)
        step = self.step or (self.max - self.min) / 100
        # enough decimals that every step shows (ipywidgets' default '.2f' shows 0.005 as 0.01)
        digits = max(2, -math.floor(math.log10(step)) if step > 0 else 2)
        return w.FloatSlider(
            value=self.value, min=self.min, max=self.max, step=step, readout_format=f".{digits}f", **common
        )


class SliderPlot:
    """What :func:`slider_plot` returns: the sliders, the current values and a redraw method."""

    def __init__(self, draw: Callable[..., Any], controls: dict[str, Slider]):
        self.draw = draw
        self.controls = controls
        self.values: dict[str, Any] = {k: c.value for k, c in controls.items()}
        self.sliders: dict[str, Any] = {}
        self.handle = None

    def render(self):
        """Call ``draw`` with the current values and return the figure (closed for pyplot)."""
        fig = self.draw(**self.values)
        if fig is None:
            raise TypeError("a slider's draw function must return its matplotlib Figure")
        plt.close(fig)  # we display it ourselves; keeps the inline backend from showing it twice
        return fig

    def update(self, **values: Any) -> None:
        """Set some values and redraw in place (what moving a slider does)."""
        unknown = set(values) - set(self.controls)
        if unknown:
            raise KeyError(f"no slider named {sorted(unknown)}; sliders: {sorted(self.controls)}")
        self.values.update(values)
        fig = self.render()
        if self.handle is not None:
            self.handle.update(fig)

    def _on_change(self, name: str, change: dict) -> None:
        self.update(**{name: change["new"]})


def _in_kernel() -> bool:
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def slider_plot(draw: Callable[..., Any], *, interactive: bool | None = None, **controls: Slider) -> SliderPlot:
    """Show ``draw(**defaults)`` as a figure, plus live sliders in a Jupyter kernel.

    Parameters
    ----------
    draw:
        A pure function of the slider values returning a matplotlib ``Figure``.
    interactive:
        Show the sliders. ``None`` (default): only when running in a Jupyter kernel.
    **controls:
        One :class:`Slider` per keyword argument of ``draw``.

    Examples
    --------
    >>> def draw(temperature):
    ...     fig, ax = plt.subplots()
    ...     ax.bar([0, 1], softmax([2.0, 1.0], temperature))
    ...     return fig
    >>> slider_plot(draw, temperature=Slider(1.0, 0.05, 10, log=True))  # doctest: +SKIP
    """
    if not controls:
        raise ValueError("slider_plot needs at least one Slider")
    sp = SliderPlot(draw, controls)
    if interactive is None:
        interactive = _in_kernel()
    if interactive:
        for name, ctl in controls.items():
            slider = ctl.widget(name)
            slider.observe(lambda change, name=name: sp._on_change(name, change), names="value")
            sp.sliders[name] = slider
        display(w.VBox(list(sp.sliders.values())))
    fig = sp.render()
    sp.handle = display(fig, display_id=True)
    return sp
