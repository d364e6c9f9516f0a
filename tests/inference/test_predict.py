"""predict: any image becomes an MNIST-like 28×28 digit, and a trained model reads rendered digits right."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw, ImageFont
from typer.testing import CliRunner

from mlptrain.base.errors import DataError
from mlptrain.cli.main import app
from mlptrain.core.digit import BOX, SIZE, centre_of_mass, load_grayscale, prepare, to_mnist

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def render(
    digit: int,
    canvas: tuple[int, int] = (300, 200),
    size: int = 120,
    ink: int | tuple = 0,
    paper: int | tuple = 255,
    offset: tuple[int, int] = (0, 0),
    mode: str = "L",
) -> Image.Image:
    """`digit` in Pillow's own font (the one the synthetic training data uses), centred on the canvas + offset."""
    image = Image.new(mode, canvas, paper)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=font)
    xy = ((canvas[0] - (right - left)) / 2 - left + offset[0], (canvas[1] - (bottom - top)) / 2 - top + offset[1])
    draw.text(xy, str(digit), fill=ink, font=font)
    return image


def gray(image: Image.Image) -> torch.Tensor:
    image = image.convert("L")
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(image.size[1], image.size[0]) / 255


def ink_box(digit: torch.Tensor) -> tuple[int, int]:
    rows, cols = (digit > 0).any(1).nonzero(), (digit > 0).any(0).nonzero()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


CASES = {
    "mnist-size white on black": dict(canvas=(28, 28), size=22, ink=255, paper=0),
    "black on white 300x200": dict(),
    "white on black 300x200": dict(ink=255, paper=0),
    "off-centre, small": dict(size=50, offset=(-90, 50)),
    "off-centre, large": dict(size=160, offset=(70, -10)),
    "grey on grey, tall": dict(canvas=(120, 400), size=110, ink=90, paper=190),
    "blue on cream": dict(mode="RGB", ink=(20, 30, 140), paper=(250, 245, 225)),
}


@pytest.mark.parametrize("case", CASES)
def test_digits_come_out_28x28_centred_by_mass_in_a_20px_box(case):
    digit = to_mnist(gray(render(3, **CASES[case])))
    assert digit.shape == (SIZE, SIZE) and digit.min() >= 0 and digit.max() == 1
    assert torch.equal(digit, (digit * 255).round() / 255)  # whole bytes, as MNIST's pixels are
    com_y, com_x = centre_of_mass(digit)
    assert abs(com_y - 14) <= 1 and abs(com_x - 14) <= 1, (com_y, com_x)
    assert BOX - 2 <= max(ink_box(digit)) <= BOX
    assert digit[0].sum() == digit[-1].sum() == digit[:, 0].sum() == digit[:, -1].sum() == 0  # a black frame


def test_polarity_size_and_place_do_not_change_the_result():
    reference = to_mnist(gray(render(5)))
    for case in ("white on black 300x200", "off-centre, small", "off-centre, large", "blue on cream"):
        other = to_mnist(gray(render(5, **CASES[case])))
        # Up to a whole-pixel shift: centring moves by whole pixels, so a centre of mass near x.5 may round either way.
        nearest = min((other.roll((dy, dx), (0, 1)) - reference).abs().mean() for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        assert nearest < 0.03, case


def test_a_thin_pen_on_a_large_canvas_is_thickened_to_mnist_strokes():
    image = Image.new("L", (300, 300), 255)
    ImageDraw.Draw(image).line([(90, 60), (210, 60), (130, 250)], fill=0, width=2)  # a 7, 2 px wide in 190
    digit = to_mnist(gray(image))
    # Shrunk as it is, the stroke would be a tenth of a pixel, grey; widened it is solid and about 2 px wide.
    assert digit.max() == 1 and (digit > 0.5).sum() > 40


def test_transparent_png_is_laid_on_white(tmp_path):
    image = render(8, mode="RGBA", ink=(0, 0, 0, 255), paper=(0, 0, 0, 0))  # black ink, transparent paper
    image.save(tmp_path / "eight.png")
    digit = prepare(tmp_path / "eight.png")
    assert max(ink_box(digit)) >= BOX - 2 and centre_of_mass(digit)[0] == pytest.approx(14, abs=1)


def test_a_16_bit_png_reads_like_an_8_bit_one(tmp_path):
    import numpy as np

    image = render(2)
    Image.fromarray(np.asarray(image).astype(np.uint16) * 257).save(tmp_path / "deep.png")  # mode I;16
    image.save(tmp_path / "plain.png")
    assert (prepare(tmp_path / "deep.png") - prepare(tmp_path / "plain.png")).abs().max() <= 1 / 255


def test_a_damaged_exif_block_is_read_past_quietly(tmp_path):
    """PIL warns about EXIF tags that point past the file; the digit does not need them, and a warning would print
    a line besides the file's own."""
    entry = struct.pack("<HHII", 0x010F, 2, 1000, 5000)  # a 1000-byte 'Make' tag at offset 5000, past the end
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + entry + struct.pack("<I", 0)
    render(4).save(tmp_path / "four.jpg", "JPEG", exif=b"Exif\x00\x00" + tiff)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        digit = prepare(tmp_path / "four.jpg")
    assert caught == [] and digit.shape == (SIZE, SIZE)


def test_an_image_over_pils_pixel_limit_is_refused(tmp_path, monkeypatch):
    """PIL only warns between its limit and twice it; that warning is the refusal, in the file's one line."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    render(4, canvas=(120, 100)).save(tmp_path / "big.png")  # 12,000 pixels: over the limit, under twice it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError, match=r"big\.png: refused: .*exceeds limit"):
            load_grayscale(tmp_path / "big.png")
    assert caught == []


def test_a_blank_image_has_no_digit():
    with pytest.raises(DataError, match="no digit found"):
        to_mnist(torch.ones(50, 80), "blank.png")


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p.write_text("not an image"), "not an image file"),
        (lambda p: p.write_bytes(_png_bytes()[:120]), "damaged"),
        (lambda p: p.mkdir(), "a folder"),
        (lambda p: None, "no such file"),
    ],
)
def test_unreadable_files_are_named(tmp_path, make, needle):
    path = tmp_path / "input.png"
    make(path)
    with pytest.raises(DataError, match=needle) as caught:
        load_grayscale(path)
    assert str(path) in str(caught.value)


def _png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    render(1).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory) -> list[tuple[Path, int]]:
    """All ten digits in five looks each, as PNG and JPEG files."""
    folder = tmp_path_factory.mktemp("digits")
    looks = [dict(), CASES["white on black 300x200"], CASES["off-centre, small"], CASES["blue on cream"]]
    looks.append(dict(canvas=(64, 64), size=48))
    files = []
    for digit in range(10):
        for i, look in enumerate(looks):
            path = folder / f"d{digit}-{i}.{'jpg' if i % 2 else 'png'}"
            render(digit, **look).convert("RGB").save(path)
            files.append((path, digit))
    return files


def test_a_trained_model_reads_rendered_digits(trained_run, digit_files):
    result = invoke("predict", trained_run / "best.pt", *(p for p, _ in digit_files), "--json", "--top", "2")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert [o["file"] for o in out] == [str(p) for p, _ in digit_files]
    for o in out:
        assert isinstance(o["label"], int) and 0 <= o["confidence"] <= 1 and len(o["top"]) == 2
        assert o["top"][0]["probability"] == o["confidence"] >= o["top"][1]["probability"]
    right = sum(o["label"] == digit for o, (_, digit) in zip(out, digit_files, strict=True))
    assert right / len(out) >= 0.8, f"{right}/{len(out)} rendered digits read right"


def test_unreadable_files_are_reported_and_the_rest_classified(trained_run, digit_files, tmp_path):
    notes, corrupt = tmp_path / "notes.txt", tmp_path / "corrupt.png"
    notes.write_text("hello")
    corrupt.write_bytes(_png_bytes()[:100])
    good = [digit_files[0][0], digit_files[7][0]]
    for extra in ([], ["--json"]):
        result = invoke("predict", trained_run / "best.pt", good[0], notes, corrupt, good[1], *extra)
        assert result.exit_code == 2
        errors = result.stderr.strip().splitlines()
        assert len(errors) == 2 and str(notes) in errors[0] and str(corrupt) in errors[1]
        assert all(line.startswith("mlptrain: error: ") for line in errors)
        if extra:
            assert [o["file"] for o in json.loads(result.stdout)] == [str(p) for p in good]
        else:
            assert str(good[0]) in result.stdout and str(good[1]) in result.stdout
            assert "%" in result.stdout and "Traceback" not in result.stdout


def test_table_shows_top_k(trained_run, digit_files):
    result = invoke("predict", trained_run / "best.pt", digit_files[0][0], "--top", "20")
    assert result.exit_code == 0
    (line,) = result.stdout.strip().splitlines()
    assert line.startswith(f"{digit_files[0][0]}: ") and line.count("%") == 10  # K is capped at the class count


def test_missing_checkpoint_is_one_line(digit_files):
    result = invoke("predict", "nowhere.pt", digit_files[0][0])
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [
        "mlptrain: error: checkpoint not found: nowhere.pt"
    ]
