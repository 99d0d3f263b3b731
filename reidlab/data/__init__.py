"""Re-ID data: the file layout, the synthetic world, real-dataset parsers, transforms and loaders.

Imports flow one way: ``layout`` <- ``synth`` <- ``datasets`` and ``layout`` <- ``camstyle``
<- ``loaders``; ``loaders`` also imports ``transforms`` and (for :class:`ReIDDataset`)
``datasets``, and nothing imports ``loaders``.

* :mod:`reidlab.data.layout` -- folder names, the ``Item`` record ``(path, pid, camid)``,
  file-name parsing and ``read_image`` (notebook 08);
* :mod:`reidlab.data.synth` -- ``make_synthetic_reid``: the procedural re-ID world (notebook 00);
* :mod:`reidlab.data.datasets` -- ``load_reid_dataset``: Market-1501 / DukeMTMC-reID / MSMT17
  / synthetic trees (notebook 08);
* :mod:`reidlab.data.transforms` -- ECN's train and test transforms (notebook 08);
* :mod:`reidlab.data.camstyle` -- the colour-statistics camera-style stand-in (notebooks 09-10);
* :mod:`reidlab.data.loaders` -- ``ImageDataset``, ``TargetDataset``, ``CamStyleTargetDataset``,
  ``ColorStyleTargetDataset``, ``make_loader``, ``make_reid_loaders`` (notebooks 08-10).

Importing this package only defines names (no files are read or written).
"""
from .datasets import ReIDDataset, load_reid_dataset

__all__ = ["ReIDDataset", "load_reid_dataset"]
