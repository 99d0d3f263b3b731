"""ECN (Zhong et al., "Invariance Matters: Exemplar Memory for Domain Adaptive Person
Re-identification", CVPR 2019) as a trainer: notebooks 08-10 use it, ``python -m reidlab.ecn``
runs it.

* :mod:`reidlab.ecn.config` -- :class:`ECNConfig` (every setting, ECN's defaults) and
  :func:`scaled_schedule` (ECN's lr step and kNN start scaled to a shorter run);
* :mod:`reidlab.ecn.loop` -- the ECN step and one epoch (:func:`run_epoch`, :func:`ecn_epoch` on a
  run's :class:`ECNParts`), and :func:`train_source`, the supervised source baseline that shares that loop;
* :mod:`reidlab.ecn.pretrain` -- the backbone pretrained here on a third synthetic domain
  (:func:`synthetic_weights`, ``--pretrained synthetic``), the stand-in for ImageNet weights;
* :mod:`reidlab.ecn.build` -- :func:`load_domains` and :func:`build_ecn`: what a run trains with;
* :mod:`reidlab.ecn.evaluate` -- :func:`evaluate_model`: ECN's test (pool5, and the embedding);
* :mod:`reidlab.ecn.run` -- :func:`train_ecn`: train, checkpoint, evaluate, resume, log;
* :mod:`reidlab.ecn.rundir` -- the run folder: checks, a lock, checkpoints and logs, nothing lost;
* :mod:`reidlab.ecn.cli` -- the command line, one flag per setting.
"""
from .build import build_ecn, load_domains
from .cli import main
from .config import INVARIANCES, ECNConfig, scaled_schedule
from .evaluate import evaluate_model
from .loop import ECNParts, ecn_loss, make_optimizer, run_epoch, split_batch, train_source
from .pretrain import SYNTHETIC, pretrained_weights, synthetic_weights
from .run import ECNResult, train_ecn
from .rundir import load_checkpoint

__all__ = [
    "INVARIANCES",
    "ECNConfig",
    "scaled_schedule",
    "split_batch",
    "make_optimizer",
    "ecn_loss",
    "run_epoch",
    "train_source",
    "SYNTHETIC",
    "synthetic_weights",
    "pretrained_weights",
    "ECNParts",
    "ECNResult",
    "load_domains",
    "build_ecn",
    "evaluate_model",
    "load_checkpoint",
    "train_ecn",
    "main",
]
