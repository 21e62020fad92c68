"""Prometheus exposition of deployment metrics (observability._metrics)."""

from __future__ import annotations

import threading

from phi_engine.observability._metrics import DeploymentMetrics, Gauges, prometheus_text


def test_counts_histograms_and_text_format() -> None:
    m = DeploymentMetrics()
    for ms in (0.05, 0.3, 2.0, 40.0, 20_000.0):
        m.served(queue_ms=ms, compute_ms=1.0, batch_size=3)
    m.ended("shed")
    m.ended("queue_full")
    m.ended("something-else")  # unknown outcomes count as failed
    text = prometheus_text([Gauges("dep_1", 'we"ird', "1.0", 2, 5, 1, m)])
    assert 'phi_requests_total{deployment="dep_1",outcome="completed"} 5' in text
    assert 'phi_requests_total{deployment="dep_1",outcome="shed"} 1' in text
    assert 'phi_requests_total{deployment="dep_1",outcome="failed"} 1' in text
    # cumulative buckets: 0.05 ms <= 0.1 ms; 0.3 ms <= 0.5 ms; 20 s only in +Inf
    assert 'phi_queue_seconds_bucket{deployment="dep_1",le="0.0001"} 1' in text
    assert 'phi_queue_seconds_bucket{deployment="dep_1",le="0.0005"} 2' in text
    assert 'phi_queue_seconds_bucket{deployment="dep_1",le="10.0"} 4' in text
    assert 'phi_queue_seconds_bucket{deployment="dep_1",le="+Inf"} 5' in text
    assert 'phi_batch_size_bucket{deployment="dep_1",le="4.0"} 5' in text
    assert 'phi_replicas{deployment="dep_1",model="we\\"ird",version="1.0"} 2' in text
    assert text.count("# TYPE phi_queue_seconds histogram") == 1


def test_concurrent_recording_loses_nothing() -> None:
    m = DeploymentMetrics()

    def work() -> None:
        for _ in range(2000):
            m.served(1.0, 1.0, 1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.snapshot().outcomes["completed"] == 8000
