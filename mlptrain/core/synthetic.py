"""Digit-like 28×28 images made offline: PIL-rendered glyphs, randomly warped, thickened and speckled.

Seeded and CPU-only, so the same seed gives the same images on every machine. Used by `data.dataset: synthetic`
and by the tests, which write them out as MNIST IDX files.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

SIZE = 28
# (font size, stroke width) pairs: regular and bold glyphs at a few heights.
_STYLES = ((19, 0), (22, 0), (25, 0), (19, 1), (22, 1))


@functools.cache
def glyph_templates() -> torch.Tensor:
    """(styles, 10, 28, 28) float in [0, 1]: white digits on black, centred like MNIST's 20×20 box."""
    from PIL import Image, ImageDraw, ImageFont

    templates = torch.zeros(len(_STYLES), 10, SIZE, SIZE)
    for s, (font_size, stroke) in enumerate(_STYLES):
        font = ImageFont.load_default(size=font_size)
        for digit in range(10):
            image = Image.new("L", (SIZE, SIZE), 0)
            draw = ImageDraw.Draw(image)
            left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=font, stroke_width=stroke)
            xy = ((SIZE - (right - left)) / 2 - left, (SIZE - (bottom - top)) / 2 - top)
            draw.text(xy, str(digit), fill=255, font=font, stroke_width=stroke, stroke_fill=255)
            templates[s, digit] = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(SIZE, SIZE)
    return templates / 255.0


def make_digits(n: int, seed: int, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """n images (n, 28, 28) uint8 and labels (n,) int64, a deterministic function of (n, seed)."""
    g = torch.Generator().manual_seed(seed)
    templates = glyph_templates()
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.empty(n, SIZE, SIZE, dtype=torch.uint8)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        style = torch.randint(0, len(_STYLES), (stop - start,), generator=g)
        base = templates[style, labels[start:stop]].unsqueeze(1)  # (B, 1, 28, 28)
        thin = torch.tensor([stroke == 0 for _, stroke in _STYLES])[style]
        images[start:stop] = _distort(base, thin, g)
    return images, labels


def _distort(base: torch.Tensor, thin: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random affine + smooth elastic warp, stroke-width change, contrast and speckle: (B,1,28,28) -> uint8."""
    b = base.shape[0]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return torch.rand(b, *shape, generator=g) * (high - low) + low

    angle = uniform(-15, 15) * math.pi / 180
    scale_x, scale_y = uniform(0.85, 1.2), uniform(0.85, 1.2)  # >1 shrinks: the grid samples a larger area
    shear = uniform(-0.3, 0.3)
    shift = uniform(-0.15, 0.15, 2)  # in [-1, 1] grid units: about ±2 pixels
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos * scale_x, (-sin + shear) * scale_y, shift[:, 0]], 1),
            torch.stack([sin * scale_x, cos * scale_y, shift[:, 1]], 1),
        ],
        1,
    )  # (B, 2, 3)
    grid = F.affine_grid(theta, [b, 1, SIZE, SIZE], align_corners=False)  # (B, 28, 28, 2)
    # A smooth displacement field (4×4 control points, bicubic) bends strokes the way handwriting does.
    wobble = torch.randn(b, 2, 4, 4, generator=g) * 0.06
    up = _bicubic_4_to_28()
    grid = grid + (up.T @ wobble @ up).permute(0, 2, 3, 1)  # bicubic upsampling, as two matmuls (4× faster)
    image = F.grid_sample(base, grid, align_corners=False)  # (B, 1, 28, 28)

    # A thicker pen for about a third of the thin glyphs (bold glyphs are thick already).
    thick = _max_3x3(image)
    pen = (torch.rand(b, generator=g) < 0.35) & thin
    pen = pen.float().view(b, 1, 1, 1) * uniform(0.5, 1.0, 1, 1, 1)
    image = torch.maximum(image, thick * pen)
    image = image * uniform(1.0, 1.8, 1, 1, 1)  # contrast: strokes saturate, as MNIST's mostly do
    speckle = (torch.rand(image.shape, generator=g) < 0.01).float() * torch.rand(image.shape, generator=g)
    image = (image + speckle).clamp(0, 1)
    return (image.squeeze(1) * 255).round().to(torch.uint8)


@functools.cache
def _bicubic_4_to_28() -> torch.Tensor:
    """(4, 28): bicubic interpolation (align_corners) from 4 points to 28, one axis; separable, so a 4×4 field
    upsamples as up.T @ field @ up."""
    basis = torch.eye(4).view(4, 1, 1, 4)
    return F.interpolate(basis, size=(1, SIZE), mode="bicubic", align_corners=True).view(4, SIZE)


def _max_3x3(image: torch.Tensor) -> torch.Tensor:
    """max_pool2d(image, 3, stride=1, padding=1), as the maximum of shifted rows then columns (2.5× faster)."""
    p = F.pad(image, (1, 1, 1, 1), value=float("-inf"))
    rows = torch.maximum(torch.maximum(p[..., :, :-2], p[..., :, 1:-1]), p[..., :, 2:])
    return torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])
