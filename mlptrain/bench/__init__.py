"""`mlptrain bench`: how fast training runs on a device, measured in one process; numbers, never prints.

`harness` times things (plans, interleaved medians), `cases` are what is measured, and `suite` runs them all
into a BenchResult.
"""
