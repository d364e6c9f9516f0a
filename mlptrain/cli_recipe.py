"""The recipe's commands, `augment` and `lr-find`, registered on cli's app: the CLI's second typer module, because
cli.py reached the 500-line limit of tests/test_layout.py. Parse, call one library function, render.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mlptrain import exits
from mlptrain.cli import ConfigFile, Overrides, _command

OutPng = Annotated[Path, typer.Option("--out", metavar="FILE.png", help="Where to draw the figure.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object with every point, and nothing else.")]


@_command(None, "mlptrain augment configs/mnist-best.yaml --out grid.png")
def augment(config: ConfigFile = None, set_: Overrides = None, out: OutPng = Path("augment.png")) -> None:
    """Draw training images beside augmented copies of each, as data.augment makes them: a look before training."""
    with exits.errors():
        from mlptrain import augment as augment_
        from mlptrain import report
        from mlptrain.config import load_config

        report.saved(report.make_console(), "grid", augment_.save_preview(load_config(config, set_ or []), out))


@_command("lr-find", "mlptrain lr-find configs/mnist.yaml --out lr.png")
def lr_find(config: ConfigFile = None, set_: Overrides = None, out: OutPng = Path("lr.png"), json_out: Json = False):
    """Smith's learning-rate range test: train with a rate growing exponentially, plot the loss, suggest a rate."""
    with exits.errors():
        from mlptrain import lrfind, report
        from mlptrain.config import load_config

        result = lrfind.run(load_config(config, set_ or []), out)
        if json_out:
            return typer.echo(json.dumps(result.to_json()))
        report.show_lr_find(report.make_console(), result, out)
