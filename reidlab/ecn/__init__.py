from .train_all import *  # noqa: F401,F403  (phase 1: split below)
from .train_all import __all__  # noqa: F401
