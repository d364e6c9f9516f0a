"""The commands that use a trained checkpoint: `mlptrain eval`, `export` and `predict`. Parse, call one library
function (mlptrain.inference), render."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from mlptrain.cli import exits, streams
from mlptrain.cli.app import Checkpoint, DataRoot, Device, bare_means, command

DATA_ROOT_HINT = "or give --data-root DIR, the folder that holds MNIST/ or FashionMNIST/ (a folder dataset: train/)"


class SplitChoice(str, Enum):
    """What `eval --split` accepts."""

    test = "test"
    val = "val"


class ExportFormat(str, Enum):
    """What `export --format` accepts."""

    onnx = "onnx"
    pt2 = "pt2"
    safetensors = "safetensors"


@command("eval", "mlptrain eval runs/<run>/best.pt --errors errors.png")
def evaluate(
    checkpoint: Checkpoint,
    split: Annotated[
        SplitChoice,
        typer.Option(metavar="test|val", help="test: the held-back test set; val: the run's validation images."),
    ] = SplitChoice.test,
    data_root: DataRoot = None,
    device: Device = "auto",
    errors: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--errors", metavar="FILE.png", help="Save a grid of the most confidently wrong images here."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Rebuild the model from CHECKPOINT alone and score it: accuracy, per class, and the confusion matrix."""
    with exits.errors():
        from mlptrain.base.files import check_output

        check_output(errors, "--errors")
        streams.announce(f"loading {checkpoint}", quiet=json_out)
        from mlptrain.cli import report
        from mlptrain.inference.evaluate import evaluate_checkpoint

        with exits.hint(DATA_ROOT_HINT):
            result = evaluate_checkpoint(
                checkpoint, split=split.value, data_root=data_root, device=device, errors_image=errors
            )
        for note in result.notes:
            report.warning(note)
        if result.record_problem:
            report.warning(result.record_problem)
        if json_out:
            typer.echo(json.dumps(result.to_json()))
        else:
            report.show_eval(report.make_console(), result)


@command(
    None,
    "mlptrain export runs/<run>/best.pt model.onnx",
    "mlptrain export runs/<run>/best.pt model.safetensors --raw-pixels",
    cls=bare_means("--raw-pixels", "1", ("1", "255")),
)
def export(
    checkpoint: Checkpoint,
    out: Annotated[Path, typer.Argument(metavar="OUT", help="The file to write: .onnx, .pt2 or .safetensors.")],
    format_: Annotated[
        Optional[ExportFormat],  # noqa: UP045
        typer.Option("--format", metavar="onnx|pt2|safetensors", help="The format, if not the one OUT's suffix names."),
    ] = None,
    raw_pixels: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--raw-pixels",
            metavar="[=255]",
            help="Fold the normalisation into the first layer: the model takes pixels in [0, 1] (=255: 0-255).",
        ),
    ] = None,
    batch: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--batch", min=1, metavar="N", help="A fixed batch size N instead of any (onnx, pt2)."),
    ] = None,
    data_root: DataRoot = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of lines.")] = False,
) -> None:
    """Write CHECKPOINT's model to OUT for other tools (ONNX, torch.export, safetensors), checked by loading it back."""
    with exits.errors():
        from mlptrain.base.files import check_output

        check_output(out, "OUT")
        streams.announce(f"loading {checkpoint}", quiet=json_out)
        from mlptrain.cli import report
        from mlptrain.inference.export import export_checkpoint, pixel_scale

        scale = pixel_scale(raw_pixels)
        with exits.hint(DATA_ROOT_HINT):
            result = export_checkpoint(
                checkpoint, out, format_.value if format_ else None, scale, batch=batch, data_root=data_root
            )
        if json_out:
            typer.echo(json.dumps(result.to_json()))
        else:
            report.show_export(report.make_console(), result)


@command(None, "mlptrain predict runs/<run>/best.pt digits/ --csv labels.csv")
def predict(
    checkpoint: Checkpoint,
    images: Annotated[
        list[Path],
        typer.Argument(metavar="IMAGE", help="PNG or JPEG files of any size, or folders of them."),
    ],
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Also classify the images in the folders' sub-folders.")
    ] = False,
    csv: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--csv", metavar="FILE", help="Also write file,label,confidence there, a row per image."),
    ] = None,
    top: Annotated[int, typer.Option("--top", min=1, metavar="K", help="Show the K most probable classes.")] = 3,
    device: Device = "auto",
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON list, an object per classified file.")
    ] = False,
) -> None:
    """Classify image files as MNIST would see them: grayscale, light ink on black, centred in 28×28.

    A folder gives its image files, sorted; other files in it are skipped with a note.
    """
    with exits.errors():
        from mlptrain.base.files import check_output

        check_output(csv, "--csv")
        streams.announce(f"loading {checkpoint}", quiet=json_out)
        from mlptrain.base.errors import DataError
        from mlptrain.cli import report
        from mlptrain.inference import predict as predict_

        files, notes = predict_.image_files(images, recursive=recursive)
        if not files:  # one line, that says why
            raise DataError("no image files to classify" + "".join(f"; {note}" for note in notes))
        for note in notes:
            report.note(note)
        result = predict_.predict_files(checkpoint, files, device=device, top=top)
        for _, message in result.failures:
            report.error(message)
        if csv is not None:
            predict_.write_csv(csv, result.predictions)
        if json_out:
            typer.echo(json.dumps([p.to_json() for p in result.predictions]))
        else:
            report.show_predictions(report.make_console(), result)
    if result.failures:  # the readable files were still classified; the exit code says not all were
        raise typer.Exit(2)
