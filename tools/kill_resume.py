"""kill -9 `mlptrain train` at random moments, then `--resume` each run, and check what a crash may never break:
the run finishes, `best.pt` holds the best epoch that `metrics.csv` and the final summary report, and no temp
file is left behind.

    .venv/bin/python tools/kill_resume.py [KILLS] [SEED]

Each kill lands 3 to 14 s after the start (importing torch takes a few of those), so some runs are killed while
starting up, before their first checkpoint: `--resume` starts those again from the config.yaml they left, and one
killed before it wrote even that is refused in one line (exit 2), there being nothing to resume.
Prints a line per kill and the counts at the end; exits 1 if any run was left inconsistent.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlptrain.run.checkpoint import checkpoint_epoch  # noqa: E402
from mlptrain.run.runs import read_run  # noqa: E402

EPOCHS = 40  # about 10 s of training here: most kills land inside it


def kill_and_resume(run: Path, after: float) -> dict:
    """One trial: train, kill -9 after `after` seconds, resume to the end, and what was found."""
    argv = [sys.executable, "-m", "mlptrain", "train", str(REPO / "configs/smoke.yaml"), "--run-dir", str(run)]
    proc = subprocess.Popen([*argv, "--set", f"train.epochs={EPOCHS}", "-q"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    found = {"had_checkpoint": (run / "last.pt").exists(), "temp_files": len(list(run.glob(".*.tmp")))}
    started = (run / "config.yaml").exists()
    done = subprocess.run([sys.executable, "-m", "mlptrain", "train", "--resume", str(run), "--json"],
                          capture_output=True, text=True)  # fmt: skip
    if not started:  # killed before it wrote anything: nothing to resume, said in one line
        said = done.stderr.strip()
        ok = done.returncode == 2 and "\n" not in said and "Traceback" not in said
        return {**found, "started": False, "ok": ok, "why": "" if ok else said}
    found["started"] = True
    if done.returncode != 0:
        return {**found, "ok": False, "why": done.stderr.strip()}
    summary, listed = json.loads(done.stdout), read_run(run)
    best = {summary["best_epoch"], listed.best_epoch, checkpoint_epoch(run / "best.pt")}
    left = [p.name for p in run.glob(".*")]
    ok = len(best) == 1 and len(listed.history) == EPOCHS and not left
    return {**found, "ok": ok, "why": "" if ok else f"best epochs {sorted(best)}, left behind {left}"}


def main() -> int:
    kills = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(kills):
            result = kill_and_resume(Path(tmp) / f"run{i}", rng.uniform(3.0, 14.0))
            results.append(result)
            where = (
                "after its first checkpoint"
                if result["had_checkpoint"]
                else "before its first checkpoint"
                if result["started"]
                else "before it wrote anything"
            )
            verdict = "ok" if result["ok"] else result["why"]
            print(f"kill {i + 1}: {where}, {result['temp_files']} temp file(s): {verdict}", flush=True)
    bad = sum(not r["ok"] for r in results)
    print(
        f"{kills} kills: {sum(r['had_checkpoint'] for r in results)} after the first checkpoint, "
        f"{sum(not r['started'] for r in results)} before the run wrote anything (refused in one line, exit 2), "
        f"{sum(r['temp_files'] > 0 for r in results)} left a temp file; {kills - bad} consistent after --resume, "
        f"{bad} not"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
