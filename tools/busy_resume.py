"""Stop `mlptrain train` with Ctrl-C beside a busy process, resume it there, and compare it bit for bit with the
same run trained through without a stop and without the busy process: a resume must be exact whatever the load,
with the default `threads: auto` (which picks fewer threads when other processes keep cores busy).

    .venv/bin/python tools/busy_resume.py [CONFIG] [TRIES]

CONFIG defaults to the smoke recipe; the other case the owners check is tools/busy_resume.py b8 (batch 8, hidden
[32], the case whose small products MKL splits by thread count). Each try: start `python3 -c "while True: pass"`,
train, send SIGINT once the first epoch's line is out, resume, stop the busy process, compare metrics.csv and
every tensor of last.pt. Prints a line per try and the count; exits 1 if any differs. The runs are `python -m
mlptrain` in the current folder, so from the repository's root they use its package.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# Batch 8 and a 32-unit layer at 1,600 images: the last batch of each epoch is small, where thread counts split bits.
B8 = "name: b8\nseed: 3\ndevice: cpu\ndata: {dataset: synthetic, synthetic_size: 1600, val_size: 200}\n"
B8 += "model: {hidden: [32], dropout: 0.2}\ntrain: {epochs: 3, batch_size: 8, lr: 0.1, scheduler: onecycle}\n"
COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")


def train(config: str, run: Path, busy: bool, stop: bool) -> str:
    """Train `config` into `run` (beside a busy process, stopped by SIGINT after epoch 1 and resumed); returns
    what happened and the thread count `threads: auto` chose."""
    command = [sys.executable, "-m", "mlptrain", "train", config, "--run-dir", str(run)]
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    time.sleep(0.5 if busy else 0)  # so that threads: auto sees it from the start
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        said = []
        for line in proc.stdout:
            said.append(line)
            if stop and line.startswith("epoch 1/"):
                proc.send_signal(signal.SIGINT)  # as Ctrl-C: the run saves where it is and stops
        threads = next((line.split("·")[1].strip() for line in said if line.startswith("device:")), "")
        if proc.wait() != 130 or not stop:
            return f"ran through ({threads})"
        subprocess.run([*command[:4], "--resume", str(run)], capture_output=True, check=True)
        return f"stopped after epoch 1 ({threads}), resumed"
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()


def same(a: Path, b: Path) -> bool:
    def rows(run: Path) -> list[tuple]:
        with open(run / "metrics.csv", newline="") as f:
            return [tuple(row[c] for c in COLUMNS) for row in csv.DictReader(f)]

    wa, wb = (torch.load(run / "last.pt", weights_only=True)["model"] for run in (a, b))
    return rows(a) == rows(b) and wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def main() -> int:
    config = sys.argv[1] if len(sys.argv) > 1 else "smoke"
    tries = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with tempfile.TemporaryDirectory() as tmp:
        if config == "b8":
            config = str(Path(tmp, "b8.yaml"))
            Path(config).write_text(B8)
        reference = Path(tmp, "reference")
        print(f"reference: {train(config, reference, busy=False, stop=False)}", flush=True)
        identical = 0
        for n in range(1, tries + 1):
            where = train(config, Path(tmp, f"try{n}"), busy=True, stop=True)
            ok = same(reference, Path(tmp, f"try{n}"))
            identical += ok
            print(f"try {n}: {'identical' if ok else 'DIFFERENT'}; {where}", flush=True)
        print(f"{identical} of {tries} stopped and resumed beside a busy process are bit for bit the undisturbed run")
    return 0 if identical == tries else 1


if __name__ == "__main__":
    sys.exit(main())
