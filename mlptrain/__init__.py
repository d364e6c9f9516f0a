"""mlptrain: train and evaluate MLPs on MNIST-style digits with a hand-written Linear layer.

Importing the package is cheap: torch is imported by the modules that need it, not here.
"""

import os

# MKL's strict reproducible mode: its matmuls give the same bits at any thread count, so `threads: auto` may
# change the count between epochs without changing the results (without it, weights differed in the last bits
# after a few steps; no cost measured). Not small products: core/nn.py runs those at one thread (SERIAL_BELOW).
# MKL reads it at its first call, so here, before any: the CLI, torchrun's and sweeps' workers (which inherit it)
# and library callers all import this first. A user's own setting wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"
