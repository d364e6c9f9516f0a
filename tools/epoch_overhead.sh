#!/usr/bin/env bash
# One `mlptrain train mnist-best` on synthetic digits for N epochs, from the checkout at REPO, in a fresh folder:
#   tools/epoch_overhead.sh REPO N   ->   N  wall_s  train+val_s  peak_KB
# Run it for N = 12 and 2 (and for two checkouts, interleaved) and take (Δ wall − Δ train+val) ÷ 10 over the mean
# epoch: the per-epoch overhead that `mlptrain bench --only overhead` reports, from whole commands.
set -euo pipefail
repo=$(cd "${1:?usage: tools/epoch_overhead.sh REPO N}" && pwd)
n=${2:?usage: tools/epoch_overhead.sh REPO N}
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
start=$(date +%s.%N)
/usr/bin/time -f "%M" -o "$work/peak" env PYTHONPATH="$repo" "$python" -m mlptrain train mnist-best \
    --set data.dataset=synthetic --set data.synthetic_size=3500 --set data.val_size=500 --set device=cpu \
    --set train.epochs="$n" --run-dir "$work/run" >/dev/null 2>&1
end=$(date +%s.%N)
"$python" - "$work/run/metrics.csv" "$n" "$start" "$end" "$(cat "$work/peak")" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
busy = sum(float(r["train_seconds"]) + float(r["val_seconds"]) for r in rows)
print(sys.argv[2], round(float(sys.argv[4]) - float(sys.argv[3]), 3), round(busy, 3), sys.argv[5])
PY
