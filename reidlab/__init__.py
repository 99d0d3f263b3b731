"""reidlab: Batch Normalization for domain-adaptive person re-ID, as a small tested library.

Two layers in one package; imports flow one way, from the lessons to the library:

* the library -- what a practitioner lifts into their own code; needs only torch,
  torchvision, numpy and pillow:
  :mod:`reidlab.bn`, :mod:`reidlab.dsbn`, :mod:`reidlab.ibn`, :mod:`reidlab.models`,
  :mod:`reidlab.memory`, :mod:`reidlab.evaluation`, :mod:`reidlab.rerank`,
  :mod:`reidlab.data`, :mod:`reidlab.ecn` (ECN's trainer and ``python -m reidlab.ecn``),
  and the small :mod:`reidlab.profiles`, :mod:`reidlab.runtime`, :mod:`reidlab.files`;
* :mod:`reidlab.lessons` -- what only the notebooks need (``setup()``, the toy task,
  plots, sliders, exercise checkers; may use matplotlib, seaborn, ipywidgets, IPython).

Importing this package, or any module in it, changes no global state. docs/ARCHITECTURE.md
says what may import what and where new code goes.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]
