"""The tuning commands, `augment` (a look at data.augment) and `lr-find` (the learning-rate range test): parse, call
one library function (mlptrain.tune), render."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mlptrain.cli import exits
from mlptrain.cli.app import ConfigFile, Overrides, command

OutPng = Annotated[Path, typer.Option("--out", metavar="FILE.png", help="Where to draw the figure.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object with every point, and nothing else.")]


@command(None, "mlptrain augment mnist-best --out grid.png")
def augment(config: ConfigFile = None, set_: Overrides = None, out: OutPng = Path("augment.png")) -> None:
    """Draw training images beside augmented copies of each, as data.augment makes them: a look before training."""
    with exits.errors():
        from mlptrain.base.config import load_config
        from mlptrain.base.files import check_output
        from mlptrain.cli import report
        from mlptrain.tune.preview import save_preview

        check_output(out, "--out")

        report.saved(report.make_console(), "grid", save_preview(load_config(config, set_ or []), out))


@command("lr-find", "mlptrain lr-find mnist --out lr.png")
def lr_find(config: ConfigFile = None, set_: Overrides = None, out: OutPng = Path("lr.png"), json_out: Json = False):
    """Smith's learning-rate range test: train with a rate growing exponentially, plot the loss, suggest a rate."""
    with exits.errors():
        from mlptrain.base.config import load_config
        from mlptrain.base.files import check_output
        from mlptrain.cli import report
        from mlptrain.tune import lrfind

        check_output(out, "--out")

        result = lrfind.run(load_config(config, set_ or []), out)
        for note in result.notes:
            report.warning(note)
        if json_out:
            return typer.echo(json.dumps(result.to_json()))
        report.show_lr_find(report.make_console(), result, out)
