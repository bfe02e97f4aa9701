"""`nexusgen bench serve`: its load loops against a live server and its bookkeeping (timings themselves are
never asserted)."""

import json

from nexusgen.bench import serve as bench
from tests.serve.conftest import shapes_mini, start_server  # noqa: F401  (fixtures)


def test_closed_and_open_loops_account_for_every_request(start_server):  # noqa: F811
    server = start_server(max_batch=4, max_queue=2)
    closed = bench.closed_loop(server, clients=2, per_client=2, steps=2, time_limit_s=60).summary()
    assert (closed["sent"], closed["ok"], closed["lost"], closed["status_5xx"]) == (4, 4, 0, 0)
    assert closed["p50_s"] > 0 and closed["throughput_rps"] > 0
    opened = bench.open_loop(server, rate_rps=200.0, duration_s=0.1, steps=2).summary()  # a burst of 20
    assert opened["sent"] == 20 and opened["lost"] == 0 and opened["status_5xx"] == 0
    assert opened["ok"] + opened["status_429"] == 20 and opened["status_429"] > 0  # the queue holds 2
    json.dumps(opened)


def test_batch_histogram_is_de_cumulated():
    before = {"count": 1, "sum": 1, "le=1.0": 1, "le=2.0": 1, "le=4.0": 1, "le=8.0": 1, "le=+Inf": 1}
    after = {"count": 4, "sum": 11, "le=1.0": 2, "le=2.0": 2, "le=4.0": 3, "le=8.0": 4, "le=+Inf": 4}
    formed = bench.batches_formed(before, after)
    assert formed == {"calls": 3, "mean_batch": 10 / 3, "calls_by_size": {"<=1": 1, "<=4": 1, "<=8": 1}}


def test_targets_judge_the_report():
    phase = {"status_5xx": 0, "lost": 0, "rate_429": 0.3}
    report = {"load": {"1x": phase, "2x": phase, "4x": {**phase, "status_5xx": 1}},
              "concurrency_1": {"ratio_to_in_process": 1.1}, "in_process": {"batch_speedup_bound": 3.0},
              "rss_mb": {"growth_fraction": 0.01}, "batching_gain": 1.4}
    judged = bench.targets(report)
    assert judged["zero_5xx_all_loads"] == {"value": 1, "met": False}
    assert judged["overhead_at_most_1.2"]["met"] and judged["rss_growth_below_5pct"]["met"]
    assert judged["batching_gain_at_least_1.5"] == {"value": 1.4, "met": False, "bound": 3.0}
    assert bench.percentiles([3.0, 1.0, 2.0])["p50_s"] == 2.0 and bench.percentiles([])["p99_s"] is None
