"""mlptrain: train and evaluate MLPs on MNIST-style digits with a hand-written Linear layer.

Importing the package is cheap: torch is imported by the modules that need it, not here.
"""

__version__ = "0.1.0"
