"""An image file made into a 28×28 digit the way MNIST's were: what `predict` classifies and what a `folder`
dataset trains on (one preparation for both, so a model sees at predict time what it saw in training).

MNIST's recipe (LeCun et al.): the digit, light ink on black, is scaled so its longer side is 20 pixels, keeping
its aspect ratio, with anti-aliasing, then placed in a 28×28 field so that its centre of mass is the centre.
Photos and scans come dark on light and in any size, so the background is found and inverted first.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from mlptrain.base.errors import DataError
from mlptrain.base.files import file_problem, not_there

SIZE = 28  # the field
BOX = 20  # the longer side of the digit inside it
INK = 0.5  # a pixel at least this far from the background (on the stretched 0..1 scale) is ink
NOISE = 0.2  # below this, paper grain and JPEG ringing: set to background
MIN_STROKE = 2.0  # pixels in the 20-pixel box: thinner strokes are widened to this (see thicken)
WORK = 4 * BOX  # the largest size, in pixels, at which strokes are measured and widened
MAX_SIDE = 4096  # larger images are reduced to this first: a 12-megapixel photo is not, and strokes survive it


def load_grayscale(path: Path) -> torch.Tensor:
    """(H, W) float in [0, 1] from any image file PIL reads; transparency is laid over white, as on paper."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: a folder, not an image file")
    if not path.exists():
        raise DataError(f"{path}: {not_there(path, 'file')}")
    problem = file_problem(path, "image file")
    if problem:
        raise DataError(problem)
    try:
        with warnings.catch_warnings():
            # An image over PIL's pixel limit is refused (below); its other warnings (a damaged EXIF block) are
            # about metadata the digit does not need, and would print lines besides the one for the file.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            gray = _open_grayscale(path)
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file PIL can read (PNG, JPEG, ...)") from None
    except PermissionError:
        raise DataError(f"{path}: cannot be read (permission denied)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: refused: {_first_sentence(e)}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated or corrupt data in a known format
        raise DataError(f"{path}: a damaged image file ({_first_sentence(e)})") from None
    width, height = gray.size
    pixels = torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).view(height, width)
    return pixels.float() / 255


def _open_grayscale(path: Path):
    """The image at `path` as a PIL image in mode L, upright, transparency over white, at most MAX_SIDE wide."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)  # phone photos are often stored sideways
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
        if image.mode.startswith("I") or image.mode == "F":  # 16-bit or float: convert("L") would clip at 255
            image = image.convert("F")
            scale = 255 / max(image.getextrema()[1], 1e-12)
            image = image.point(lambda v: v * scale)
        gray = image.convert("L")
        if max(gray.size) > MAX_SIDE:  # a large photo: average it down by a whole factor first, to spare memory
            gray = gray.reduce(-(-max(gray.size) // MAX_SIDE))
    return gray


def _first_sentence(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def to_mnist(gray: torch.Tensor, source: str = "the image") -> torch.Tensor:
    """A grayscale image (H, W) in [0, 1] -> (28, 28) in [0, 1], light ink on black, as an MNIST digit.

    Raises DataError if it holds no ink (a blank page).
    """
    border = torch.cat([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if border.median() > 0.5:  # a light background: dark ink on paper
        gray, border = 1 - gray, 1 - border
    background, peak = border.median(), gray.max()
    if peak - background < 0.1:
        raise DataError(f"{source}: no digit found (the image is blank or has almost no contrast)")
    ink = ((gray - background) / (peak - background)).clamp_(0, 1)
    ink[ink < NOISE] = 0

    rows = (ink >= INK).any(1).nonzero().squeeze(1)
    cols = (ink >= INK).any(0).nonzero().squeeze(1)
    crop = thicken(ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])  # the bounding box of the ink
    height, width = crop.shape
    scale = BOX / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    # Bilinear with antialias: area-weighted when shrinking, smooth when growing; the grey edges MNIST has.
    digit = F.interpolate(crop[None, None], size=size, mode="bilinear", antialias=True, align_corners=False)[0, 0]
    digit = digit.clamp_(0, 1)

    # The whole-pixel shift that brings the centre of mass nearest to (14, 14), keeping the digit inside the field.
    com_y, com_x = centre_of_mass(digit)
    top = min(max(round(SIZE / 2 - com_y), 0), SIZE - size[0])
    left = min(max(round(SIZE / 2 - com_x), 0), SIZE - size[1])
    canvas = torch.zeros(SIZE, SIZE)
    canvas[top : top + size[0], left : left + size[1]] = digit
    return (canvas * 255).round_() / 255  # MNIST's pixels are bytes: the model never saw anything between


def thicken(crop: torch.Tensor) -> torch.Tensor:
    """Widen strokes thinner than MNIST's pen, so a thin pen on a large canvas still reads as a digit once shrunk.

    MNIST's writers used a pen about 2-3 pixels wide in the final 20-pixel box; a 3-pixel brush on a 300-pixel
    drawing would shrink to a faint tenth of a pixel. Works at WORK pixels at most: a larger crop is first
    reduced by max-pooling, which keeps a thin line whole where averaging would fade it.
    """
    if max(crop.shape) > WORK:
        factor = WORK / max(crop.shape)
        size = (max(1, round(crop.shape[0] * factor)), max(1, round(crop.shape[1] * factor)))
        crop = F.adaptive_max_pool2d(crop[None, None], size)[0, 0]
    # Stroke width ~ 2 * area / boundary length: a stroke of width w and length L has area wL and 2L edge pixels.
    mask = F.pad(crop >= INK, (1, 1, 1, 1))
    core = mask[1:-1, 1:-1]
    inside = core & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    area = int(core.sum())
    width = 2 * area / max(1, area - int(inside.sum()))
    grow = round(MIN_STROKE * max(crop.shape) / BOX - width)
    if grow < 1:
        return crop
    # A (grow+1)-square max filter widens every stroke by `grow` pixels; the padding keeps the ends inside.
    return F.max_pool2d(F.pad(crop[None, None], (grow,) * 4), grow + 1, stride=1)[0, 0]


def prepare(path: Path) -> torch.Tensor:
    """An image file -> (28, 28) in [0, 1], ready to normalise; DataError naming the file if it cannot be."""
    return to_mnist(load_grayscale(path), str(path))


def centre_of_mass(image: torch.Tensor) -> tuple[float, float]:
    """(row, column) of an image's centre of mass, in pixel indices."""
    ys, xs = torch.arange(image.shape[0], dtype=image.dtype), torch.arange(image.shape[1], dtype=image.dtype)
    mass = image.sum()
    return float((image.sum(1) * ys).sum() / mass), float((image.sum(0) * xs).sum() / mass)


@functools.cache
def image_suffixes() -> frozenset[str]:
    """The file suffixes PIL reads (lower case, with the dot): what counts as an image file in a folder."""
    from PIL import Image

    return frozenset(suffix.lower() for suffix in Image.registered_extensions())
