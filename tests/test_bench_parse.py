"""The benchmark reads wrk's --latency report right (rate, percentiles in any unit, errors) and its
--setting options as the gateway's settings."""

from __future__ import annotations

import pytest

from bench.proxy_overhead import parse_wrk, setting_pair

WRK_OUTPUT = """Running 8s test @ http://127.0.0.1:4000/v1/chat/completions
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   731.02ms  400.12ms   1.62s    70.00%
    Req/Sec    40.10     10.00    60.00     80.00%
  Latency Distribution
     50%  730.93ms
     75%    1.02s
     90%    1.40s
     99%    1.62s
  104 requests in 3.00s, 80.00KB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:     34.81
Transfer/sec:     26.66KB
"""


def test_parse_wrk_reads_rate_percentiles_and_errors() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert result == {
        "rps": 34.81,
        "p50_ms": pytest.approx(730.93),
        "p99_ms": pytest.approx(1620.0),
        "requests": 104,
        "non_2xx": 7,
        "socket_errors": 5,
    }


def test_parse_wrk_microseconds_and_clean_run() -> None:
    output = WRK_OUTPUT.replace("730.93ms", "110.00us").replace("  Socket errors: connect 0, read 2, write 0, timeout 3\n", "")
    result = parse_wrk(output.replace("  Non-2xx or 3xx responses: 7\n", ""))
    assert result["p50_ms"] == pytest.approx(0.11)
    assert result["non_2xx"] == 0 and result["socket_errors"] == 0


def test_settings_are_named_with_or_without_the_prefix() -> None:
    # both spellings must reach the gateway as ROUTEGATE_DAILY_BUDGET_USD, never ROUTEGATE_ROUTEGATE_...
    assert setting_pair("ROUTEGATE_DAILY_BUDGET_USD=1000") == ("DAILY_BUDGET_USD", "1000")
    assert setting_pair("ROUTE_ON=sticky") == ("ROUTE_ON", "sticky")
    assert setting_pair("X=a=b") == ("X", "a=b")


def test_a_cell_with_failed_requests_is_not_compared() -> None:
    from bench.proxy_overhead import Cell, Run, _find, failed_requests

    clean = Cell("routegate-random", False, 1, rps=500.0, requests=5000)
    refused = Cell("routegate-random", False, 32, rps=9000.0, requests=90000, non_2xx=89000)
    timed_out = Cell("routegate-random", True, 32, rps=400.0, requests=4000, socket_errors=3)
    assert failed_requests(clean) is None
    assert failed_requests(refused) == "89000 non-2xx answers and 0 socket errors in 90000 requests"
    assert failed_requests(timed_out) == "0 non-2xx answers and 3 socket errors in 4000 requests"
    for cell in (refused, timed_out):
        cell.error = failed_requests(cell)
    run = Run(settings={}, machine={}, cells=[clean, refused, timed_out])
    assert _find(run, "routegate-random", False, 1) is clean
    assert _find(run, "routegate-random", False, 32) is None and _find(run, "routegate-random", True, 32) is None


def test_options_given_with_quick_are_kept() -> None:
    """--quick fills in only what the command line leaves out: its documented c=32 runs measure c=32."""
    from bench.proxy_overhead import parse_args

    quick = parse_args(["--quick", "--concurrency", "32"])
    assert (quick.duration, quick.warmup, quick.concurrency, quick.encoder_batches) == (3, 1, [32], 5)
    full = parse_args(["--duration", "6"])
    assert (full.duration, full.warmup, full.concurrency, full.encoder_batches) == (6, 2, [1, 32, 128], 20)
