"""`mlptrain bench`: parse, run the bench suite (mlptrain.bench), render its tables, and write the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from mlptrain.cli import exits
from mlptrain.cli.app import Device, command


@command(None, "mlptrain bench --quick --out bench.md")
def bench(
    device: Device = "auto",
    quick: Annotated[
        bool, typer.Option("--quick", help="Fewer sizes, repeats and samples: under a minute on a CPU.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object with every number, nothing else.")
    ] = False,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--out", metavar="FILE.md", help="Also write a markdown report there, and its plot as FILE.png."),
    ] = None,
    only: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--only",
            metavar="SECTION",
            help="Run only this section (again for more): layer, epoch, roofline, growth, threads, startup, overhead.",
        ),
    ] = None,
) -> None:
    """Measure training speed here: our layer against torch.nn.Linear, whole epochs, roofline, cost growth, threads
    under load, whole-command start-up, a run's and a sweep's overhead."""
    with exits.errors():
        from mlptrain.base.errors import ConfigError
        from mlptrain.base.files import atomic_write_text, check_output, make_dirs
        from mlptrain.cli import live, report
        from mlptrain.core.device import resolve_device
        from mlptrain.run import plot

        if out is not None:
            if out.suffix.lower() != ".md":
                raise ConfigError(f"--out {out}: give a markdown file name ending in .md (the plot goes beside it)")
            make_dirs(out.parent)  # refused now, not after minutes of measuring
            check_output(out, "--out")
            check_output(out.with_suffix(".png"), "--out")
        target = resolve_device(device)
        from mlptrain.bench import suite
        from mlptrain.bench.tables import bench_document

        for name in only or []:
            if name not in suite.SECTIONS:
                raise ConfigError(f"--only {name}: no such section; the sections are {', '.join(suite.SECTIONS)}")
        with live.BenchProgress(report.make_console(stderr=True)) as progress:
            result = suite.run(target, quick=quick, on_stage=progress, sections=only or suite.SECTIONS)
        document = bench_document(result)
        if json_out:
            typer.echo(json.dumps(result.to_json()))
        else:
            report.show_document(report.make_console(), document)
        if out is not None:
            png = out.with_suffix(".png") if result.growth is not None else None  # the plot is the growth section's
            if png is not None:
                plot.save_bench_plot(png, result)
            atomic_write_text(out, report.markdown(document, figure=png.name if png else None))
            if not json_out:
                report.make_console().print(f"wrote {out}" + (f" and {png}" if png else ""))
