"""Prometheus metrics of the daemon (``--metrics-port``), served by prometheus-client.

Counters and histograms are updated by the daemon's loop when a job ends; gauges (queue depth,
kernels in flight, device utilisation, clients) are read when Prometheus scrapes. Without a
port the server keeps its ``NullMetrics`` and pays nothing. The endpoint has no credentials:
it listens on localhost unless told otherwise (``--metrics-addr``), and ``--metrics-redact``
replaces tenant and model names by keyed hashes.
"""
from __future__ import annotations

import hashlib
import logging
import secrets

from scheduler_daemon.server.server import NullMetrics

log = logging.getLogger("gpusched.metrics")

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
                   10.0)


class PrometheusMetrics(NullMetrics):
    def __init__(self, server, port: int, addr: str = "127.0.0.1", redact: bool = False):
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            start_http_server,
        )

        # redact: series carry a keyed hash of each tenant/model name, so whoever can read the
        # endpoint learns counts and latencies but not who the tenants are or what they run
        self._key = secrets.token_bytes(16) if redact else None
        self.registry = reg = CollectorRegistry()
        core, dev = server.core, server.device
        Gauge("gpusched_queue_depth", "jobs queued in the scheduler core",
              registry=reg).set_function(lambda: len(core))
        Gauge("gpusched_inflight_kernels", "kernels dispatched to the device, not yet complete",
              registry=reg).set_function(lambda: core.inflight)
        Gauge("gpusched_device_utilisation", "device utilisation (simulated: thread slots in use; "
              "torch: busy workers)", registry=reg).set_function(dev.utilisation)
        Gauge("gpusched_clients", "connected client sessions",
              registry=reg).set_function(lambda: len(server.sessions))
        self.jobs = Counter("gpusched_jobs", "jobs ended, by tenant and status",
                            ["tenant", "status"], registry=reg)
        self.latency = Histogram("gpusched_job_latency_seconds",
                                 "daemon latency of completed jobs: the daemon read the SUBMIT "
                                 "-> its last kernel completed (DONE.total_ms; docs/protocol.md)",
                                 ["tenant", "model"], buckets=LATENCY_BUCKETS, registry=reg)
        self.slo_missed = Counter("gpusched_slo_missed", "jobs that missed their SLO by the "
                                  "daemon's clock (SLO attainment = 1 - this / jobs ended other "
                                  "than cancelled; docs/protocol.md)",
                                  ["tenant"], registry=reg)
        self.shed = Counter("gpusched_shed", "jobs shed by the slo policies", ["tenant"],
                            registry=reg)
        self.ttft = Histogram("gpusched_ttft_seconds", "time to first token of generations "
                              "through the intercept path", ["tenant"], buckets=LATENCY_BUCKETS,
                              registry=reg)
        self.tpot = Histogram("gpusched_tpot_seconds", "time per output token after the first",
                              ["tenant"], buckets=LATENCY_BUCKETS, registry=reg)
        self.token_slo_missed = Counter("gpusched_token_slo_missed", "tokens later than their "
                                        "TTFT or TPOT SLO", ["tenant", "kind"], registry=reg)
        self.errors = Counter("gpusched_request_errors", "requests answered with ERROR",
                              ["code"], registry=reg)
        self.server, self.thread = start_http_server(port, addr=addr, registry=reg)
        log.info("metrics: serving http://%s:%d/metrics", addr, self.server.server_port)

    @property
    def port(self) -> int:
        return self.server.server_port

    def _name(self, name: str) -> str:
        if self._key is None:
            return name
        return hashlib.blake2b(name.encode(), key=self._key, digest_size=6).hexdigest()

    def job_finished(self, tenant, model, status, total_s, slo_missed):
        tenant, model = self._name(tenant), self._name(model)
        self.jobs.labels(tenant, status).inc()
        if status == "done":
            self.latency.labels(tenant, model).observe(total_s)
        elif status == "shed":
            self.shed.labels(tenant).inc()
        if slo_missed:
            self.slo_missed.labels(tenant).inc()

    def token(self, tenant, first, seconds, slo_missed):
        tenant = self._name(tenant)
        (self.ttft if first else self.tpot).labels(tenant).observe(seconds)
        if slo_missed:
            self.token_slo_missed.labels(tenant, "ttft" if first else "tpot").inc()

    def request_error(self, code):
        self.errors.labels(code).inc()

    def close(self) -> None:
        self.server.shutdown()
