"""Re-ID data: the synthetic world, real-dataset parsers, transforms and loaders.

* :mod:`reidlab.data.synth` -- ``make_synthetic_reid``: the procedural re-ID world (notebook 00);
* :mod:`reidlab.data.datasets` -- ``load_reid_dataset``: Market-1501 / DukeMTMC-reID / MSMT17
  / synthetic trees (notebook 08);
* :mod:`reidlab.data.transforms` -- ECN's train and test transforms;
* :mod:`reidlab.data.loaders` -- ``ImageDataset``, ``TargetDataset``, ``CamStyleTargetDataset``,
  ``make_loader``, ``make_reid_loaders``.
"""
from .datasets import ReIDDataset, load_reid_dataset

__all__ = ["ReIDDataset", "load_reid_dataset"]
