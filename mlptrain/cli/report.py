"""What a person reads once a command has its answer: rich tables on a terminal, plain aligned lines when piped or
in CI, and the one-line errors and warnings. live.py is the other half: what shows while a command runs.

With live.py, the only module that imports rich. Accuracies are fractions everywhere else; here they become
percentages. It renders, and decides nothing: which epoch is best, which goal was met, comes with the data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mlptrain.base.metrics import COLUMNS, LABELS, UNITS, metric_text

if TYPE_CHECKING:  # runtime imports would pull in torch, and errors must print without it
    from mlptrain.base.keys import KeyDoc
    from mlptrain.bench.tables import Cell, Document
    from mlptrain.inference.evaluate import EvalResult
    from mlptrain.inference.export import ExportResult
    from mlptrain.inference.predict import PredictResult
    from mlptrain.run.plan import RunPlan
    from mlptrain.run.runs import RunSummary
    from mlptrain.run.trainer import TrainResult
    from mlptrain.sweep.start import BudgetEnd
    from mlptrain.sweep.table import Listing, SweepTable
    from mlptrain.tune.lrfind import RangeTest


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """rich would exit 1 here, silently; the reader left, which the CLI ends as a shell would (streams.py)."""
        self.quiet = True
        raise BrokenPipeError


def make_console(stderr: bool = False) -> Console:
    """A console that is rich on a terminal and plain otherwise (pipes, files, CI=true)."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return _Console(stderr=stderr, highlight=False, force_terminal=False, no_color=True, soft_wrap=True)
    console = _Console(stderr=stderr, highlight=False)
    # Piped lines are for grep and logs: never wrap them at an imagined 80 columns.
    console.soft_wrap = not console.is_terminal
    return console


def pct(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


def error(message: str) -> None:
    """One line on stderr: 'mlptrain: error: ...' (red on a terminal)."""
    console = make_console(stderr=True)
    console.print(Text("mlptrain: error: ", style="bold red") + Text(message), soft_wrap=True)


def interrupted(message: str, resume_command: str) -> None:
    """What a stopped run says on stderr: where it stopped, and the command that carries on."""
    console = make_console(stderr=True)
    console.print(Text("mlptrain: ", style="bold yellow") + Text(message), soft_wrap=True)
    console.print(Text("resume with: ", style="bold") + Text(resume_command), soft_wrap=True)


def epochs_table(result: TrainResult, width: int | None = None) -> Table:
    """Every column of metrics.csv, an epoch a row; the best epoch starred and in green. Where one-line headers would
    not fit in `width` columns (an 80-column terminal), they take two lines, so that every number shows whole."""
    rows, best_epoch = [], result.best_epoch
    for s in result.history:
        cells = [metric_text(UNITS[name], value) for name, value in s.as_dict().items()]
        cells[0] = f"★ {cells[0]}" if s.epoch == best_epoch else cells[0]
        rows.append(cells)
    labels = [LABELS[name] for name in COLUMNS]
    needed = sum(max(len(label), *(len(row[i]) for row in rows)) + 2 for i, label in enumerate(labels))
    if width is not None and needed > width:
        labels = [label.replace(" ", "\n") for label in labels]
    table = Table(title=f"{result.run_dir}", title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
    table.show_edge, table.padding = False, (0, 1, 0, 0)  # columns two spaces apart, no rules between them
    for label in labels:
        table.add_column(label, justify="right")
    for s, cells in zip(result.history, rows, strict=True):
        table.add_row(*cells, style="bold green" if s.epoch == best_epoch else None)
    return table


def warning(message: str) -> None:
    """One line on stderr for something that went wrong but did not stop the command."""
    console = make_console(stderr=True)
    console.print(Text("mlptrain: warning: ", style="bold yellow") + Text(message), soft_wrap=True)


def note(message: str) -> None:
    """One line on stderr about something skipped on purpose: not a problem, but the user should know."""
    console = make_console(stderr=True)
    console.print(Text("mlptrain: note: ", style="dim") + Text(message), soft_wrap=True)


def show_eval(console: Console, result: EvalResult) -> None:
    """The scores, then the confusion matrix with each class's accuracy: tables on a terminal, else aligned text."""
    if console.is_terminal:
        console.print(f"[bold]{result.checkpoint}[/]")  # as a title it would wrap at the narrow table's width
        table = Table(show_header=False)
        table.add_column(style="dim")
        table.add_column(justify="right")
        for key, value in (
            ("split", f"{result.split} ({result.dataset})"),
            ("samples", f"{result.samples:,}"),
            ("accuracy", pct(result.accuracy)),
            ("loss", f"{result.loss:.4f}"),
            ("epoch", str(result.epoch)),
            ("device", result.device),
        ):
            table.add_row(key, value)
        console.print(table)
        console.print(confusion_table(result, rgb=console.color_system in ("256", "truecolor")))
    else:
        console.print(
            f"{result.checkpoint}: {result.split} accuracy={pct(result.accuracy)} loss={result.loss:.4f} "
            f"samples={result.samples} epoch={result.epoch}"
        )
        labels = [str(label) for label in range(len(result.confusion))]
        per_class = result.per_class
        console.print(
            "per-class accuracy: "
            + "  ".join(
                f"{_label(label, name)}={_pct_or_dash(a)}"
                for label, name, a in zip(labels, result.classes, per_class, strict=True)
            )
        )
        console.print("confusion matrix (rows: true label, columns: predicted):")
        body = [
            [_label(label, name), *map(str, counts), str(sum(counts)), _pct_or_dash(a)]
            for label, name, counts, a in zip(labels, result.classes, result.confusion, per_class, strict=True)
        ]
        console.print(plain_table(["true", *labels, "n", "accuracy"], body))
    if result.errors_image is not None:
        console.print(f"errors: the {result.errors_shown} most confident mistakes -> {result.errors_image}")
    if result.record is not None:
        console.print(f"recorded: {result.record}", style="dim")


def confusion_table(result: EvalResult, rgb: bool = True) -> Table:
    """Rows are true labels, columns predictions; a cell's shade grows with its count, right answers in green.

    `rgb`: the terminal shows graded colours; on a 16-colour one the shades are two steps each.
    """
    table = Table(
        title="confusion matrix: rows are the true label, columns the prediction",
        title_justify="left",
        header_style="bold",
    )
    table.add_column("true", style="bold")
    for label in range(len(result.confusion)):
        table.add_column(str(label), justify="right")
    table.add_column("n", justify="right", style="dim")
    table.add_column("accuracy", justify="right")
    off_diagonal = [c for t, row in enumerate(result.confusion) for p, c in enumerate(row) if p != t]
    worst = max(off_diagonal, default=0) or 1
    for label, (row, accuracy) in enumerate(zip(result.confusion, result.per_class, strict=True)):
        total = sum(row) or 1
        cells = []
        for predicted, count in enumerate(row):
            if predicted == label:
                cells.append(Text(str(count), style=_shade(count / total, True, rgb)))
            elif count:
                # Square root: the few big confusions stand out, and a single mistake is still visible.
                cells.append(Text(str(count), style=_shade((count / worst) ** 0.5, False, rgb)))
            else:
                cells.append(Text("·", style="dim"))
        table.add_row(_label(str(label), result.classes[label]), *cells, f"{sum(row):,}", _pct_or_dash(accuracy))
    return table


def _shade(strength: float, right: bool, rgb: bool) -> str:
    """A background from pale to deep (green for right answers, red for mistakes), with text that reads on it."""
    if not rgb:  # rich would map a graded colour to the nearest of 16, often grey: pick from those 16 instead
        if right:
            return "black on green" if strength > 0.5 else "black on bright_green"
        return "bold white on red" if strength > 0.5 else "red"
    pale, deep = ((225, 245, 225), (25, 120, 45)) if right else ((255, 228, 225), (190, 25, 25))
    r, g, b = (round(p + (d - p) * strength) for p, d in zip(pale, deep, strict=True))
    return f"{'#ffffff' if strength > 0.45 else '#000000'} on rgb({r},{g},{b})"


def _label(label: str, name: str) -> str:
    return label if name == label else f"{label} {name}"


def _pct_or_dash(fraction: float | None) -> str:
    return "-" if fraction is None else pct(fraction)


def plain_table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Columns aligned with spaces, the first `left` to the left and the rest to the right: for pipes and logs."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join(line(row).rstrip() for row in [header, *rows])


def show_predictions(console: Console, result: PredictResult) -> None:
    """One row per classified file: its top classes, most probable first."""
    if not result.predictions:
        return
    k = len(result.predictions[0].top)
    if console.is_terminal:
        table = Table(title=f"{result.checkpoint} ({result.dataset})", title_justify="left", header_style="bold")
        table.add_column("file")
        for rank in range(1, k + 1):
            table.add_column(_ordinal(rank), justify="right")
        for p in result.predictions:
            cells = [f"{name} {pct(prob)}" for _, name, prob in p.top]
            # A first guess under 50% is a guess: say so by colour rather than hide it.
            cells[0] = Text(cells[0], style="bold green" if p.confidence >= 0.5 else "bold yellow")
            table.add_row(str(p.file), *cells)
        console.print(table)
    else:
        for p in result.predictions:
            console.print(f"{p.file}: " + "  ".join(f"{name} {pct(prob)}" for _, name, prob in p.top))


def _ordinal(n: int) -> str:
    return f"{n}{'st' if n == 1 else 'nd' if n == 2 else 'rd' if n == 3 else 'th'}"


def show_listing(console: Console, listing: Listing) -> None:
    """`mlptrain runs`: a sweep's trials, or the runs in a folder."""
    if listing.sweep is not None:
        show_sweep(console, listing.sweep)
    else:
        show_runs(console, listing.folder, listing.runs, listing.keys)


def show_runs(console: Console, folder: Path, runs: list[RunSummary], keys: list[str]) -> None:
    """The runs, newest first, with the config keys that differ between them."""
    if not runs:
        console.print(f"no runs in {folder}")
        return
    header = ["run", "started", "epochs", "best val acc", "test acc", "time", *keys]
    rows = []
    for run in runs:
        flat = run.settings
        planned = run.epochs_planned
        rows.append(
            [
                run.path.name,
                run.started.strftime("%Y-%m-%d %H:%M"),
                f"{len(run.history)}/{planned}" if planned is not None else str(len(run.history)),
                _pct_or_dash(run.best_val_acc),
                _pct_or_dash(run.test_acc),
                duration(run.seconds),
                *(_setting(flat[key]) if key in flat else "-" for key in keys),
            ]
        )
    if not console.is_terminal:
        console.print(plain_table(header, rows, left=2))
        return
    # Short headers where they are unambiguous ('lr' for train.lr); and if a column per key would still not fit
    # the terminal, one wrapping column of key=value pairs, since squeezed columns would cut the values short.
    leaves = [key.rsplit(".", 1)[-1] for key in keys]
    header[6:] = [leaf if leaves.count(leaf) == 1 else key for key, leaf in zip(keys, leaves, strict=True)]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    merged = sum(widths) + 3 * len(widths) + 1 > console.width  # cell padding and borders: 3 per column
    if merged:
        rows = [[*row[:6], "  ".join(f"{h}={v}" for h, v in zip(header[6:], row[6:], strict=True))] for row in rows]
        header = [*header[:6], "settings that differ"]
    table = Table(title=str(folder), title_justify="left", header_style="bold")
    for i, name in enumerate(header):
        fixed = i < 6
        justify = "left" if i < 2 or (merged and not fixed) else "right"
        table.add_column(name, justify=justify, style=None if fixed else "cyan", no_wrap=fixed)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _setting(value) -> str:
    """A config value as YAML would write it inline: 0.1, [256, 128], true, onecycle; a float to 4 significant
    digits, as trial folders name it (a drawn 0.18879413151821905 reads 0.1888; --json keeps every digit)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


_STATE_STYLE = {"failed": "red", "pruned": "dim"}


def show_sweep(console: Console, table: SweepTable) -> None:
    """A sweep's trials, best first on the monitored metric, with the swept keys that vary and the best marked."""
    metric = table.monitor.replace("_", " ")
    header = ["#", *table.keys, "state", "epochs", f"best {metric}", "test acc", "time", ""]
    rows = []
    for row in table.rows:
        run, value = row.run, row.value
        shown = "-" if value is None else metric_text(UNITS[table.monitor], value)
        epochs = "-" if run is None else f"{len(run.history)}/{run.epochs_planned or '?'}"
        rows.append(
            [
                str(row.trial.index),
                *(_setting(row.trial.values[key]) for key in table.keys),
                row.trial.state,
                epochs,
                shown,
                _pct_or_dash(run.test_acc if run else None),
                duration(run.seconds) if run else "-",
                ("★ best" if console.is_terminal else "best") if row.best else "",
            ]
        )
    if console.is_terminal:
        grid = Table(title=f"{table.folder} ({table.method})", title_justify="left", header_style="bold")
        for i, name in enumerate(header):
            grid.add_column(name, justify="right", style="cyan" if 0 < i <= len(table.keys) else None)
        for cells, row in zip(rows, table.rows, strict=True):
            state = row.trial.state
            grid.add_row(*cells, style="bold green" if row.best else _STATE_STYLE.get(state))
        console.print(grid)
    else:
        console.print(f"{table.folder} ({table.method})", markup=False)
        console.print(plain_table(header, rows, left=0), markup=False)
    for row in table.rows:
        if row.trial.state == "failed":
            console.print(f"trial {row.trial.index} failed: {row.trial.reason}", markup=False)
    best = next((row for row in table.rows if row.best), None)
    if best is not None:
        console.print(f"best: trial {best.trial.index}, {table.folder / best.trial.dir / 'best.pt'}", markup=False)


def show_budget_end(console: Console, end: BudgetEnd) -> None:
    """The line under a sweep's table when --timeout ended it: how far it got, and how it carries on."""
    console.print(
        f"stopped: time budget of {end.seconds:g} s reached, {end.done:,} of {end.total:,} trials done; "
        f"`mlptrain sweep --resume {end.folder}` continues",
        markup=False,
    )


def duration(seconds: float) -> str:
    """12.3s, 4m05s, 2h03m."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def saved(console: Console, what: str, path: Path) -> None:
    console.print(f"{what}: {path}")


def show_lr_find(console: Console, test: RangeTest, plot: Path) -> None:
    """`mlptrain lr-find`: the suggested rates, how the test ended, and where its plot is."""
    if test.steepest is None:
        console.print(f"too few steps ({len(test.lrs)}) before the loss exploded to suggest a rate")
    else:
        console.print(f"suggested train.lr: {test.steepest:.3g} (steepest descent), {test.valley:.3g} (minimum / 10)")
    ended = test.stopped or f"ran all {test.steps} steps without the loss exploding"
    console.print(f"range {test.min_lr:g} to {test.max_lr:g}: {ended}")
    saved(console, "plot", plot)


def show_recipes(console: Console) -> None:
    """`mlptrain config --list`: the shipped recipes, one line each: name, what it is for, and its file."""
    from mlptrain.base.recipes import RECIPES, describe, is_sweep, recipe_names

    names = recipe_names()
    rows = [[name, "sweep" if is_sweep(name) else "train", describe(name)] for name in names]
    console.print(plain_table(["recipe", "use with", "what"], rows, left=3), markup=False)
    console.print(f"(files in {RECIPES}; a name works wherever a config file does)", markup=False, soft_wrap=True)


def show_keys(console: Console, docs: list[KeyDoc]) -> None:
    """`mlptrain config --keys`: every config key with its type, default and meaning."""
    from mlptrain.base.keys import yaml_value

    rows = [[d.key, d.type, yaml_value(d.default), d.meaning] for d in docs]
    if not console.is_terminal:
        console.print(plain_table(["key", "type", "default", "meaning"], rows, left=4), markup=False)
        return
    table = Table(box=box.SIMPLE_HEAD, header_style="bold")
    for name in ("key", "type", "default", "meaning"):
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def show_export(console: Console, result: ExportResult) -> None:
    """`mlptrain export`: what was written, what it takes, and how it compared with the checkpoint."""
    opset = f", opset {result.opset}" if result.opset is not None else ""
    takes = {"normalized": "normalised pixels, (p/255 - mean) / std", "pixels-0-1": "pixels in [0, 1]"}
    agree = "every prediction agrees" if not result.disagreements else f"{result.disagreements} predictions differ"
    lines = [
        f"wrote {result.path} ({result.format}{opset}, {result.bytes / 2**20:.2f} MiB) in {result.export_seconds:.1f}s",
        f"input '{result.input_name}' ({result.batch or 'N'}, {result.sizes[0]}): "
        + takes.get(result.input, "pixels in 0-255")
        + f"; output '{result.output_name}' ({result.batch or 'N'}, {result.sizes[-1]})",
        f"verified with {result.runtime} on {result.compared} in {result.verify_seconds:.1f}s: largest logit "
        f"difference {result.max_abs_diff:.2g}, {agree}",
    ]
    for line in lines:
        console.print(line, markup=False, highlight=False)


def show_plan(console: Console, plan: RunPlan) -> None:
    """`mlptrain train --dry-run`: what the run would use, and that it stopped before training."""
    sizes = "-".join(str(n) for n in [plan.layers[0][0], *(out for _, out in plan.layers)])
    lines = [
        f"config:     {plan.config.name}, seed {plan.config.seed}: valid",
        f"device:     {plan.device}",
        f"data:       {plan.data}",
        f"split:      {plan.split[0]:,} training and {plan.split[1]:,} validation images "
        f"(data.val_size: {plan.config.data.val_size})",
        f"model:      MLP {sizes} ({plan.config.model.activation}), {len(plan.layers)} Linear layers",
        f"parameters: {plan.parameters:,} ({plan.memory_bytes / 2**20:.1f} MiB with gradients and optimizer state)",
        f"run folder: {plan.run_dir}",
        "dry run: nothing trained, downloaded or written",
    ]
    for line in lines:
        console.print(line, markup=False, highlight=False)


# --- mlptrain bench: tables as data (bench/tables.py) with every goal already judged -------------------------


def show_document(console: Console, document: Document) -> None:
    """The document's lines and tables: rich tables with goal cells in green or red on a terminal, otherwise
    aligned plain text with ✓ or ✗ after a goal's number. (The title and command head the markdown only.)"""
    for line in document.lines:
        console.print(line, markup=False)
    for table in document.tables:
        console.print()
        if console.is_terminal:
            grid = Table(title=Text(table.title), title_justify="left", header_style="bold")
            for name in table.columns:
                grid.add_column(name, justify="left" if name in table.left else "right")
            for row in table.rows:
                grid.add_row(*(_rich_cell(cell) for cell in row))
            console.print(grid)
            for note in table.notes:
                console.print(Text(note, style="dim"))
        else:
            console.print(table.title, markup=False)
            rows = [[_plain_cell(cell) for cell in row] for row in table.rows]
            # Every column flush left, so a goal's ✓ or ✗ trails its number in line with the others.
            for line in plain_table(table.columns, rows, left=len(table.columns)).splitlines():
                console.print("  " + line, markup=False)
            for note in table.notes:
                console.print(note, markup=False)


def _rich_cell(cell: Cell) -> Text | str:
    if isinstance(cell, str):
        return cell
    ok = cell[1]
    return Text(_plain_cell(cell), style="" if ok is None else "bold green" if ok else "bold red")


def _plain_cell(cell: Cell) -> str:
    if isinstance(cell, str):
        return cell
    text, ok = cell
    return text if ok is None else f"{text} {'✓' if ok else '✗'}"


def markdown(document: Document, figure: str | None = None) -> str:
    """The document as markdown: title, command, lines, a table per section (✓/✗ after goals), `figure` if given."""
    lines = [f"# {document.title}", "", f"`{document.command}`", ""]
    lines += [f"{line}  " for line in document.lines]  # two trailing spaces: a line break
    for table in document.tables:
        lines += ["", f"## {table.title}", ""]
        lines.append("| " + " | ".join(table.columns) + " |")
        lines.append("| " + " | ".join("---" for _ in table.columns) + " |")
        for row in table.rows:
            lines.append("| " + " | ".join(_plain_cell(cell) for cell in row) + " |")
        lines += ["", *table.notes]
    if figure:
        lines += ["", f"![{document.figure}]({figure})"]
    return "\n".join(lines) + "\n"
