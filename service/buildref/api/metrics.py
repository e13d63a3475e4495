"""Prometheus metrics (``GET /metrics``), every name prefixed ``buildref_``.

The service has a registry of its own (never prometheus_client's process-wide default): it holds
the one thing only the HTTP server knows, requests answered by route and code. Everything else is
read from the status use case at scrape time — the scrape is handed a :class:`Status` and a
collector turns it into metric families — so no number is kept twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from buildref.models import Status

Counts = Callable[[], Mapping[str, int]]


def _none() -> Mapping[str, int]:
    return {}


class Metrics:
    def __init__(self, probes: Counts = _none, uploads: Counts = _none) -> None:
        """``probes``: binary cache probes made since start, by result; ``uploads``: upload
        attempts since start, by result (both counted where they happen, read at scrape time)."""
        self._probes = probes
        self._uploads = uploads
        self.registry = CollectorRegistry(auto_describe=True)
        self._http_requests = Counter(
            "buildref_http_requests", "HTTP requests answered, by route and status code",
            ["route", "code"], registry=self.registry)

    def http_request(self, route: str, code: int) -> None:
        """Count one answered request; ``route`` is one of a fixed set (never a raw path), so a
        client cannot grow the label set."""
        self._http_requests.labels(route=route, code=str(code)).inc()

    def exposition(self, status: Status, accept: str) -> tuple[bytes, str]:
        """What a scrape answers, and its content type: ``status`` (taken just now) and the
        registry's metrics, in the format ``accept`` asks for (Prometheus text 0.0.4 by default,
        OpenMetrics when asked)."""
        encode, content_type = choose_encoder(accept)
        return encode(_Scrape(status, self.registry, self._probes(), self._uploads())), content_type


class _Scrape:
    """One scrape: the status collector and the registry, as one collector."""

    def __init__(self, status: Status, registry: CollectorRegistry, probes: Mapping[str, int],
                 uploads: Mapping[str, int]) -> None:
        self._status = status
        self._registry = registry
        self._probes = probes
        self._uploads = uploads

    def collect(self) -> Iterator[Metric]:
        yield from status_metrics(self._status)
        yield from counted("buildref_cache_probes", "binary cache narinfo probes since the service started,"
                           " by result (verified, no-narinfo, untrusted, other-store-path, fetch-failed,"
                           " ...)", self._probes)
        yield from counted("buildref_uploads", "upload attempts since the service started, by result (done, "
                           "failed, dropped)", self._uploads)
        yield from self._registry.collect()


def counted(name: str, documentation: str, counts: Mapping[str, int]) -> Iterator[Metric]:
    family = CounterMetricFamily(name, documentation, labels=["result"])
    for result, count in sorted(counts.items()):
        family.add_metric([result], count)
    yield family


def shared_index_lag(status: Status) -> tuple[float, int]:
    """Ingest lag to the index: how long (seconds since the oldest) and how many events this service
    has committed that are not yet in the index (a fleet's shared PostgreSQL index; with SQLite, the
    events the indexer has still to do)."""
    return status.index_lag.seconds, status.index_lag.events


def status_metrics(s: Status) -> Iterator[Metric]:
    """The metric families of one :class:`Status`."""
    yield InfoMetricFamily("buildref", "the running service", value={"version": s.version})
    yield GaugeMetricFamily("buildref_start_time_seconds", "when the service started (seconds since the "
                            "epoch)", value=s.started_at)

    events = GaugeMetricFamily("buildref_events", "hook events in the index, by state", labels=["state"])
    events.add_metric(["pending"], s.events.pending)
    events.add_metric(["indexed"], s.events.indexed)
    events.add_metric(["failed"], s.events.failed)
    yield events
    since = s.since_start
    yield CounterMetricFamily("buildref_received_events", "hook events received since the service started",
                              value=since.received)
    yield CounterMetricFamily("buildref_indexed_events", "events indexed since the service started",
                              value=since.indexed)
    yield CounterMetricFamily("buildref_failed_events", "events refused or failed since the service started",
                              value=since.failed)
    yield CounterMetricFamily("buildref_commit_groups", "group commits of received events since the service "
                              "started", value=since.commit_groups)

    yield GaugeMetricFamily("buildref_queue_depth", "events received and not yet indexed",
                            value=s.queue_depth)
    yield GaugeMetricFamily("buildref_contents_pending", "store paths whose content is still to be learnt "
                            "before they can match", value=s.contents_pending)
    yield GaugeMetricFamily("buildref_spool_files", "events the hook spooled that are not yet taken in",
                            value=s.spool_files)
    if s.last_event is not None:
        yield GaugeMetricFamily("buildref_last_event_received_timestamp_seconds",
                                "when the newest event was received", value=s.last_event.received_at)

    db = s.database  # a size or count below 0 is one the index could not tell: left out, not shown
    if db.bytes >= 0:
        yield GaugeMetricFamily("buildref_database_size_bytes", "size of the index on disk", value=db.bytes)
    rows = GaugeMetricFamily("buildref_index_entries", "what the index holds", labels=["kind"])
    for kind, count in (("derivations", db.derivations), ("outputs", db.outputs), ("builds", db.builds)):
        if count >= 0:
            rows.add_metric([kind], count)
    yield rows

    lag_seconds, lag_events = shared_index_lag(s)
    yield GaugeMetricFamily("buildref_shared_index_lag_seconds", "age of the oldest event committed here "
                            "and not yet in the shared index (0 without one)", value=lag_seconds)
    yield GaugeMetricFamily("buildref_shared_index_lag_events", "events committed here and not yet in the "
                            "shared index (0 without one)", value=lag_events)
    if s.upload is not None:
        queue = GaugeMetricFamily("buildref_upload_queue", "store paths in the upload queue, by state",
                                  labels=["state"])
        for state, count in (("pending", s.upload.pending), ("done", s.upload.done),
                             ("failed", s.upload.failed), ("dropped", s.upload.dropped)):
            queue.add_metric([state], count)
        yield queue
