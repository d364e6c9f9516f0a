"""`mlptrain train` (one process, or N through torchrun) and `mlptrain config`: parse, call one library function,
render. torch is imported inside the commands, so a bad config is refused before it loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from mlptrain.cli import completion, exits, launch, streams
from mlptrain.cli.app import ConfigFile, Overrides, command

if TYPE_CHECKING:
    from mlptrain.base.config import Config


@command(None, "mlptrain train mnist-best --set train.epochs=60", "mlptrain train --resume runs/<run>")
def train(
    config: ConfigFile = None,
    set_: Overrides = None,
    resume: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--resume",
            metavar="RUN",
            help="Continue the run in folder RUN (or of checkpoint RUN) exactly where it stopped.",
            autocompletion=completion.checkpoints,
        ),
    ] = None,
    run_dir: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--run-dir", metavar="DIR", help="Write the run exactly here instead of <output.dir>/<name>-<timestamp>."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Let --run-dir overwrite a folder that holds a run.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final summary.")] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object with every epoch's numbers, nothing else.")
    ] = False,
    nproc: Annotated[
        int, typer.Option("--nproc", min=1, metavar="N", help="Train in N processes on this machine (data-parallel).")
    ] = 1,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check the config, data files and device, show the model, and stop.")
    ] = False,
) -> None:
    """Train an MLP as CONFIG describes, or resume a run; keep the best checkpoint (on validation) and the last."""
    with exits.errors():
        streams.announce(f"loading {config or resume}", quiet=quiet or json_out)
        from mlptrain.base.config import load_config

        _check_start(config, resume, run_dir, force)
        cfg = load_config(config, set_ or []) if config is not None else None  # a bad config is said before torch
        from mlptrain.cli import live, report
        from mlptrain.run import trainer

        if dry_run:
            return _dry_run(cfg, resume, set_ or [])
        if nproc > 1:
            flags = [flag for flag, on in (("--force", force), ("--quiet", quiet), ("--json", json_out)) if on]
            raise SystemExit(launch.launch_train(nproc, cfg, config, resume, set_ or [], run_dir, flags))
        rank = streams.rank()
        reporter = live.TrainReporter(report.make_console(), quiet=quiet or json_out or rank > 0)
        with exits.hint(exits.TRAIN_DATA_HINT), exits.live(reporter):
            if cfg is not None:
                result = trainer.train(cfg, run_dir=run_dir, force=force, callbacks=reporter)
            else:
                result = trainer.resume(resume, set_ or [], callbacks=reporter)
        if rank == 0 and json_out:
            typer.echo(json.dumps(result.to_json()))
        elif rank == 0:
            reporter.summary(result)


def _check_start(config: Path | None, resume: Path | None, run_dir: Path | None, force: bool) -> None:
    """A run starts from a CONFIG or continues with --resume, in its own folder."""
    from mlptrain.base.errors import ConfigError

    if (config is None) == (resume is None):
        raise ConfigError("give a CONFIG file to start a run, or --resume RUN to continue one (not both)")
    if resume is not None and (run_dir is not None or force):
        raise ConfigError("--resume continues a run in its own folder; --run-dir and --force do not apply")


def _dry_run(cfg: Config | None, resume: Path | None, overrides: list[str]) -> None:
    """`train --dry-run`: what the run would use (device, data files, model), checked; nothing trained or written."""
    from mlptrain.cli import report
    from mlptrain.run import resuming
    from mlptrain.run.plan import plan_run

    cfg = cfg if cfg is not None else resuming.load_for_resume(resume, overrides)[1]
    with exits.hint(exits.TRAIN_DATA_HINT):
        report.show_plan(report.make_console(), plan_run(cfg.resolved()))


@command("config", "mlptrain config mnist --set train.lr=0.1", "mlptrain config --list")
def config_(
    config: ConfigFile = None,
    set_: Overrides = None,
    keys: Annotated[bool, typer.Option("--keys", help="List every key: its type, default and meaning.")] = False,
    list_: Annotated[
        bool, typer.Option("--list", help="List the recipes that ship with mlptrain, usable by name as CONFIG.")
    ] = False,
) -> None:
    """Print the resolved config as YAML (file + overrides + defaults): what `train` would write to config.yaml."""
    with exits.errors():
        from mlptrain.base import keys as keys_
        from mlptrain.base.config import dump_yaml, load_config
        from mlptrain.base.errors import ConfigError
        from mlptrain.cli import report

        if keys and (config is not None or set_):
            raise ConfigError("--keys lists every key of the schema; give it no CONFIG or --set")
        if keys:
            return report.show_keys(report.make_console(), keys_.key_docs())
        if list_:
            return report.show_recipes(report.make_console())
        typer.echo(dump_yaml(load_config(config, set_ or []).resolved()), nl=False)
