import sys

from .train_all import main

sys.exit(main())
