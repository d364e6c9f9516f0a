"""Distorting training batches on their device (data.augment): a random affine map (rotation, scale, shear,
translation) and an elastic distortion (Simard et al. 2003), applied to a whole batch at once by one grid_sample.

Only the training pass calls it; validation, test, eval and predict see the images as scanned. The draws come from
a generator seeded by (seed, epoch, batch, rank), so a run is reproducible and a resumed one draws what an
uninterrupted one would.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mlptrain.base.config import AugmentConfig
from mlptrain.core.data import TrainingData


class Augmenter:
    """Distorts batches of flattened square images x (B, side²), normalised so that a blank pixel is `background`."""

    def __init__(self, cfg: AugmentConfig, side: int, background: float, seed: int, rank: int = 0):
        self.cfg, self.side, self.background, self.seed, self.rank = cfg, side, background, seed, rank
        self.affine = cfg.kind in ("affine", "affine+elastic")
        self.elastic = cfg.kind in ("elastic", "affine+elastic")
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def build(cls, cfg: AugmentConfig, data: TrainingData, seed: int, rank: int = 0) -> Augmenter | None:
        """The augmenter data.augment describes for `data`'s images, or None for `none`."""
        if cfg.kind == "none":
            return None
        side = math.isqrt(data.in_features)
        if side * side != data.in_features:
            raise ValueError(f"data.augment needs square images; these have {data.in_features} pixels")
        return cls(cfg, side, (0.0 - data.mean) / data.std, seed, rank)

    def generator(self, epoch: int, step: int, device: torch.device) -> torch.Generator:
        """The generator of batch `step` of `epoch` on this rank: a function of (seed, epoch, step, rank) only."""
        key = (((self.seed * 1_000_003 + epoch) * 1_000_003 + step) * 1_009 + self.rank + 1) % 2**63
        return torch.Generator(device=device).manual_seed(key)

    def __call__(self, x: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        """x (B, side²) -> a distorted copy (B, side²), each image's draws its own."""
        b, s = x.shape[0], self.side
        g = self.generator(epoch, step, x.device)
        theta = self.matrices(b, g, x.device)  # (B, 2, 3)
        pixels, _ = self.constants(x.device)
        # affine_grid's map as one einsum (many times faster than affine_grid itself on a CPU)
        grid = torch.einsum("pk,bjk->bpj", pixels, theta).view(b, s, s, 2)  # (B, s, s, 2) where each pixel reads
        if self.elastic:
            grid = grid + self.displacement(b, g, x.device)
        # Out-of-image samples read 0: shift so that 0 is the blank background, then back.
        images = (x.view(b, 1, s, s) - self.background).float()
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return (out + self.background).to(x.dtype).view(b, s * s)

    def matrices(self, b: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
        """(B, 2, 3) affine_grid matrices: rotation · shear / scale, plus a translation (identity without affine)."""
        theta = torch.zeros(b, 2, 3, device=device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        if not self.affine:
            return theta
        c = self.cfg
        u = torch.rand(b, 5, device=device, generator=g).mul_(2).sub_(1)  # (B, 5) uniform in [-1, 1)
        angle, shear = torch.deg2rad(u[:, 0] * c.rotation), torch.tan(torch.deg2rad(u[:, 1] * c.shear))
        scale = 1 + u[:, 2] * c.scale
        cos, sin = torch.cos(angle), torch.sin(angle)
        # rotation [[cos, -sin], [sin, cos]] times shear [[1, k], [0, 1]], over the scale: grid coordinates are
        # where each output pixel reads, so dividing by the scale draws the digit `scale` times as large.
        theta[:, 0, 0], theta[:, 0, 1] = cos / scale, (cos * shear - sin) / scale
        theta[:, 1, 0], theta[:, 1, 1] = sin / scale, (sin * shear + cos) / scale
        theta[:, :, 2] = u[:, 3:5] * (c.translate * 2 / self.side)  # pixels -> [-1, 1] grid units
        return theta

    def displacement(self, b: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
        """(B, s, s, 2) an elastic field in grid units: uniform(-1, 1) per pixel, Gaussian-smoothed, times alpha."""
        s, c = self.side, self.cfg
        field = torch.rand(b, 2, s, s, device=device, generator=g).mul_(2).sub_(1)  # (B, 2, s, s): x, y
        _, blur = self.constants(device)
        # The separable Gaussian blur (zero-padded, as a convolution) as two matmuls with a banded (s, s) matrix,
        # down the columns and along the rows, each displacement axis on its own: far cheaper than conv2d on a CPU.
        field = field.view(-1, s) @ blur.t()  # (B·2·s, s): along the rows
        field = torch.bmm(blur.expand(b * 2, s, s), field.view(b * 2, s, s)).view(b, 2, s, s)  # down the columns
        return field.mul_(c.elastic_alpha * 2 / s).permute(0, 2, 3, 1)  # pixels -> grid units

    def constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel centres (s², 3) as homogeneous grid coordinates, the Gaussian blur matrix (s, s)) on `device`."""
        if device not in self._constants:
            s = self.side
            t = (torch.arange(s, device=device, dtype=torch.float32) * 2 + 1) / s - 1  # align_corners=False
            ys, xs = torch.meshgrid(t, t, indexing="ij")
            pixels = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(s * s, device=device)], 1)
            self._constants[device] = pixels, blur_matrix(self.cfg.elastic_sigma, s, device)
        return self._constants[device]


def gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    """(k,) a normalised 1-D Gaussian of std `sigma` pixels, k = 2·ceil(3σ) + 1."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    return kernel / kernel.sum()


def blur_matrix(sigma: float, side: int, device: torch.device) -> torch.Tensor:
    """(side, side) B with B @ v = v convolved with gaussian_kernel(sigma), zero-padded: B[i, j] = kernel[j - i]."""
    kernel = gaussian_kernel(sigma, device)
    radius = kernel.numel() // 2
    offsets = torch.arange(side, device=device)[None, :] - torch.arange(side, device=device)[:, None]  # j - i
    inside = offsets.abs() <= radius
    return torch.where(inside, kernel[(offsets + radius).clamp(0, 2 * radius)], torch.zeros((), device=device))
