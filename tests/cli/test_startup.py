"""What a command loads and how it leaves: train and eval without torch._dynamo, torchvision or pyplot (seconds
of start-up each), eager.step equal to optimizer.step, and the fast exit keeping the exit code and the output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import cli_in_fresh_python

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
HEAVY = ("torch._dynamo", "torchvision", "matplotlib.pyplot")

# In a fresh interpreter (pytest's may hold torch._dynamo already, which makes eager.step torch's own call):
# a few steps of each optimizer with two parameter groups and a one-cycle schedule, by eager.step first, without
# torch._dynamo, then by optimizer.step from the same start; the parameters, states and rates must be identical.
SAME_STEPS = """
import sys, warnings
import torch
from mlptrain.core import eager

warnings.simplefilter("error")  # an LR scheduler's "optimizer.step() was not called first" fails the test

def run(cls, by_hand, **options):
    torch.manual_seed(0)
    w, b = torch.randn(50, requires_grad=True), torch.randn(5, requires_grad=True)
    groups = [{"params": [w]}, {"params": [b], "weight_decay": 0.0}]
    opt = eager.make_optimizer(cls, groups, lr=0.1, weight_decay=0.01, **options)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    for i in range(5):
        w.grad, b.grad = torch.randn(50), torch.randn(5)
        eager.step(opt) if by_hand else opt.step()
        sched.step()
    state = opt.state_dict()
    return [w.detach().clone(), b.detach().clone()], state, sched.get_last_lr()

cases = [(torch.optim.SGD, {"momentum": 0.9, "fused": True}), (torch.optim.SGD, {"momentum": 0.9}),
         (torch.optim.Adam, {"fused": True}), (torch.optim.AdamW, {})]
ours = [run(cls, True, **options) for cls, options in cases]
assert "torch._dynamo" not in sys.modules, "eager.step or make_optimizer imported torch._dynamo"
theirs = [run(cls, False, **options) for cls, options in cases]
assert "torch._dynamo" in sys.modules  # torch's own step still does: the check above can fail
for (p1, s1, lr1), (p2, s2, lr2) in zip(ours, theirs):
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))
    assert lr1 == lr2 and s1["param_groups"] == s2["param_groups"]
    for k in s1["state"]:
        for name, value in s1["state"][k].items():
            assert torch.equal(value, s2["state"][k][name]), name
print("ok")
"""


def test_eager_step_is_optimizer_step_without_torch_dynamo():
    out = subprocess.run([sys.executable, "-c", SAME_STEPS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_train_and_eval_load_neither_dynamo_nor_torchvision_nor_pyplot(tmp_path):
    run = tmp_path / "run"
    small = ["--set", "data.synthetic_size=1200", "--set", "data.val_size=200", "--set", "train.epochs=1"]
    cli_in_fresh_python(["train", SMOKE, "--run-dir", run, *small], forbid=HEAVY)
    assert (run / "curves.png").is_file()
    cli_in_fresh_python(["eval", run / "best.pt", "--json"], forbid=HEAVY)


def test_plot_and_config_load_no_torch(trained_run, tmp_path):
    cli_in_fresh_python(
        ["plot", trained_run, "--out", tmp_path / "c.png"], ["config", SMOKE], forbid=("torch", "matplotlib.pyplot")
    )
    assert (tmp_path / "c.png").stat().st_size > 0


def _mlptrain(*args: str | Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mlptrain", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_the_fast_exit_keeps_the_output_and_the_exit_code(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")  # eval records its result beside the checkpoint
    ok = _mlptrain("eval", run / "best.pt", "--json")  # torch loaded: leaves through os._exit
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["samples"] > 0  # the whole of it, flushed
    broken = tmp_path / "broken.pt"
    shutil.copyfile(trained_run / "best.pt", broken)
    broken.write_bytes(broken.read_bytes()[:500])
    bad = _mlptrain("eval", broken)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "broken.pt" in bad.stderr, bad.stderr
