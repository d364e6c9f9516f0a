"""The public layer API, `from mlptrain.nn import Linear, LinearFunction, MLP`: the hand-written layer and the MLP
built from it, which live in mlptrain/core/nn.py."""

from mlptrain.core.nn import MLP, Linear, LinearFunction

__all__ = ["MLP", "Linear", "LinearFunction"]
