"""The bench's harness: the plans, and timings that interleave the things compared. Never how fast."""

from __future__ import annotations

import torch

from mlptrain.bench import harness


def test_plans_cover_the_issue_sizes():
    assert harness.FULL.growth_batches == (64, 128, 256, 512, 1024, 2048, 4096)
    assert harness.FULL.growth_widths == (128, 256, 512, 1024, 2048)
    assert harness.FULL.roofline_batches == (64, 128, 256, 512, 1024, 2048, 4096)
    for quick, full in (
        (harness.QUICK.growth_batches, harness.FULL.growth_batches),
        (harness.QUICK.growth_widths, harness.FULL.growth_widths),
        (harness.QUICK.roofline_batches, harness.FULL.roofline_batches),
    ):
        assert set(quick) <= set(full) and (quick[0], quick[-1]) == (full[0], full[-1])
    assert harness.FULL.compile and not harness.QUICK.compile


def test_median_seconds_interleaves_by_thread_count_and_restores_it():
    calls = []
    seen_threads = {}

    def make(name):
        def fn():
            calls.append(name)
            seen_threads[name] = torch.get_num_threads()

        return fn

    before = torch.get_num_threads()
    seconds = harness.median_seconds(
        {"a": make("a"), "b": make("b")}, torch.device("cpu"), repeats=3, warmup=1, threads={"a": 2, "b": 1}
    )
    # the thread-count groups in turn, forwards then backwards (ABBA)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up a b; rounds a b, b a, a b
    assert seen_threads == {"a": 2, "b": 1}
    assert torch.get_num_threads() == before
    assert set(seconds) == {"a", "b"} and all(s > 0 for s in seconds.values())
