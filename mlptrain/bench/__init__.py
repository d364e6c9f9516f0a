"""A feature, `mlptrain bench`: how fast training runs on a device, measured in one process; numbers, never prints.

`harness` times things (plans, interleaved medians), `cases` are what is measured, `suite` runs them all into a
BenchResult, and `tables` turns that into tables with every goal judged, which `report` renders.
"""
