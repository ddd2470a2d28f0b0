"""What GET /metrics says, as Prometheus metric families built from plain rows: no database, no GPU probe here.

server.metrics.prometheus reads the rows at scrape time and hands them to these builders, so every name, label and
unit is decided in one place and tested without a daemon (tests/unit/test_prom_families.py). Names follow
Prometheus' conventions (base units, `_total` for counters, `_seconds`, `_bytes`, `_ratio`) and, for the GPU
readings they share with NVIDIA's dcgm-exporter, its names, units (MiB, %) and labels. A value nobody knows
(NVML's None, a job without a loss yet) is left out, never written as 0.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from scheduler.policy.states import JobState
from server.db.models import GpuPublic
from server.services.stall import DEFAULT_RULE, StallRule, stall_limit_s
from worker.spec.units import GIB

MiB = 2**20
STATES = tuple(state.value for state in JobState)
OUTCOMES = ("succeeded", "failed", "oom", "cancelled")
# Jobs that ended longer ago than this leave the per-job series (and only the latest FTQ_METRICS_ENDED_JOBS of
# those that ended since stay: server.metrics.windows), so their number stays that of the live jobs.
RECENT_S = 3600.0
# Waits from a second to a day: a job placed at once, one behind a short run, one behind a night's training.
WAIT_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0)
GPU_LABELS = ("gpu", "UUID", "device", "modelName", "pci_bus_id")  # dcgm-exporter's, less its Hostname
JOB_LABELS = ("id", "name")
_RECENT = (
    "jobs starting, running or cancelling, the FTQ_METRICS_QUEUED_JOBS queued ones that have waited longest and "
    "the latest FTQ_METRICS_ENDED_JOBS that ended in the last hour (so the series stay as many as the live jobs)"
)
WINDOWS = ("queued", "ended")  # the kinds of job a window may leave out of the per-job series


@dataclass(frozen=True)
class JobRow:
    """One job as its per-job series need it: its row, its latest attempt, its latest metric record."""

    id: int
    name: str
    state: str
    last_step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    tokens_per_s: float | None = None  # the latest metric record's throughput
    peak_memory_gib: float | None = None  # the latest attempt's peak, as the store keeps it
    attempts: int = 0
    oom_retries: int = 0
    last_record_at: datetime | None = None  # a live attempt's newest record, as the daemon read it
    record_interval_s: float | None = None  # that attempt's usual time between records
    queued_since: datetime | None = None  # when a queued job entered the queue this time


def jobs_by_state(counts: Mapping[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily("ftq_jobs", "Jobs in each state (every state, 0 included).", labels=["state"])
    for state in STATES:
        family.add_metric([state], counts.get(state, 0))
    return family


def attempts_by_outcome(counts: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(
        "ftq_attempts",
        "Attempts that ended, by outcome (succeeded, failed, oom, cancelled); outcome=oom counts every OOM.",
        labels=["outcome"],
    )
    for outcome in OUTCOMES:
        family.add_metric([outcome], counts.get(outcome, 0))
    return family


@dataclass(frozen=True)
class Observed:
    """A histogram's observations as counts: how many at or below each bucket's bound, all of them, their sum."""

    cumulative: tuple[int, ...]  # one per bucket, in the buckets' order
    count: int
    total: float


def observe(values: Iterable[float], buckets: Sequence[float]) -> Observed:
    """Observations counted into the buckets (negative ones, a clock stepped back, count as 0)."""
    observed = sorted(max(value, 0.0) for value in values)
    return Observed(tuple(bisect_right(observed, bound) for bound in buckets), len(observed), float(sum(observed)))


def histogram(name: str, documentation: str, observed: Observed, buckets: Sequence[float]) -> Metric:
    """A histogram of observations the database already holds, with fixed buckets."""
    cumulative = [(_bucket_label(bound), float(n)) for bound, n in zip(buckets, observed.cumulative, strict=True)]
    cumulative.append(("+Inf", float(observed.count)))
    return HistogramMetricFamily(name, documentation, buckets=cumulative, sum_value=observed.total)


def wait_histograms(queue_waits: Observed, submit_to_start: Observed) -> list[Metric]:
    return [
        histogram(
            "ftq_queue_wait_seconds",
            "From a job's submission to the start of its first attempt (placed on its GPUs), one per started job.",
            queue_waits,
            WAIT_BUCKETS,
        ),
        histogram(
            "ftq_submit_to_start_seconds",
            "From a job's submission to its worker's first start record (the job running), one per such job.",
            submit_to_start,
            WAIT_BUCKETS,
        ),
    ]


def queue_families(longest_wait_since: datetime | None, left_out: Mapping[str, int], now: datetime) -> list[Metric]:
    """What the per-job series do not show, as aggregates: the longest wait in the queue (none when nothing is
    queued), and how many queued and recently ended jobs the windows left out."""
    longest = GaugeMetricFamily(
        "ftq_queue_longest_wait_seconds",
        "Seconds the longest-waiting queued job has waited since it entered the queue (no sample when none is).",
    )
    if longest_wait_since is not None:
        longest.add_metric([], max((now - longest_wait_since).total_seconds(), 0.0))
    omitted = GaugeMetricFamily(
        "ftq_job_series_left_out",
        "Jobs without per-job series: queued ones past FTQ_METRICS_QUEUED_JOBS, ended (in the last hour) ones "
        "past FTQ_METRICS_ENDED_JOBS; ftq_jobs counts them all.",
        labels=["window"],
    )
    for kind in WINDOWS:
        omitted.add_metric([kind], max(left_out.get(kind, 0), 0))
    return [longest, omitted]


def job_families(rows: Iterable[JobRow], now: datetime, stall: StallRule = DEFAULT_RULE) -> list[Metric]:
    """The per-job series (labels id and name), for the jobs the caller chose (server.metrics.windows)."""

    def gauge(name: str, what: str, labels: Sequence[str] = JOB_LABELS) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, f"{what}; for {_RECENT}.", labels=list(labels))

    state = gauge("ftq_job_state", "1 for the job's current state", (*JOB_LABELS, "state"))
    progress = gauge("ftq_job_progress_ratio", "Steps done over total steps of the job's latest attempt (0 to 1)")
    loss = gauge("ftq_job_loss", "The training loss of the job's latest metric record")
    tokens = gauge("ftq_job_tokens_per_second", "Training throughput of the job's latest metric record, tokens/s")
    peak = gauge("ftq_job_peak_memory_bytes", "Peak GPU memory reserved per GPU by the job's latest attempt")
    attempts = gauge("ftq_job_attempts", "Attempts the job has had (each start, retry or requeue is one)")
    retries = gauge("ftq_job_oom_retries", "Automatic OOM retries of the job since its submission or last requeue")
    quiet = gauge("ftq_job_seconds_since_last_record", "Seconds since the running job's worker wrote its newest record")
    limit = gauge(
        "ftq_job_stall_threshold_seconds",
        "Seconds without a record after which the running job counts as stalled (FTQ_STALL_FACTOR x its usual "
        "interval, at least FTQ_STALL_MIN_S; ten times that before it has a rhythm)",
    )
    queued = gauge("ftq_job_queued_seconds", "Seconds the queued job has waited since it entered the queue")
    for row in rows:
        labels = [str(row.id), row.name]
        state.add_metric([*labels, row.state], 1)
        if row.last_step is not None and row.total_steps:
            progress.add_metric(labels, min(row.last_step / row.total_steps, 1.0))
        if row.loss is not None:
            loss.add_metric(labels, row.loss)
        if row.tokens_per_s is not None:
            tokens.add_metric(labels, row.tokens_per_s)
        if row.peak_memory_gib is not None:
            peak.add_metric(labels, round(row.peak_memory_gib * GIB))
        attempts.add_metric(labels, row.attempts)
        retries.add_metric(labels, row.oom_retries)
        if row.state == JobState.RUNNING.value and row.last_record_at is not None:
            quiet.add_metric(labels, max((now - row.last_record_at).total_seconds(), 0.0))
            limit.add_metric(labels, stall_limit_s(row.record_interval_s, stall.factor, stall.min_s))
        if row.state == JobState.QUEUED.value and row.queued_since is not None:
            queued.add_metric(labels, max((now - row.queued_since).total_seconds(), 0.0))
    return [state, progress, loss, tokens, peak, attempts, retries, quiet, limit, queued]


def gpu_families(gpus: Iterable[GpuPublic]) -> list[Metric]:
    """Each GPU's readings as GET /gpus shows them (server.services.machine.gpus_view),
    dcgm-exporter's names beside ours."""

    def gauge(name: str, what: str, extra: Sequence[str] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, what, labels=[*GPU_LABELS, *extra])

    fb_used = gauge("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB), as dcgm-exporter reports it.")
    fb_free = gauge("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB), as dcgm-exporter reports it.")
    util = gauge("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %), as dcgm-exporter reports it.")
    total = gauge("ftq_gpu_memory_total_bytes", "The GPU's memory.")
    used = gauge("ftq_gpu_memory_used_bytes", "The GPU's memory in use, by any process.")
    free = gauge("ftq_gpu_memory_free_bytes", "The GPU's memory free.")
    healthy = gauge("ftq_gpu_healthy", "1 when the probe could read the GPU, 0 when it reported an error.")
    foreign = gauge("ftq_gpu_foreign_processes", "Processes on the GPU that are not ftq's workers.")
    bound = gauge("ftq_gpu_bound_job", "1 for the job (label job_id) holding the GPU; no series when free.", ["job_id"])
    for gpu in gpus:
        labels = [str(gpu.index), gpu.uuid, f"nvidia{gpu.index}", gpu.name, gpu.pci_bus_id or ""]
        for mib, bytes_, value in ((fb_used, used, gpu.memory_used), (fb_free, free, gpu.memory_free)):
            if value is not None:
                mib.add_metric(labels, value // MiB)
                bytes_.add_metric(labels, value)
        if gpu.memory_total is not None:
            total.add_metric(labels, gpu.memory_total)
        if gpu.utilization is not None:
            util.add_metric(labels, gpu.utilization)
        healthy.add_metric(labels, 1 if gpu.healthy else 0)
        foreign.add_metric(labels, sum(1 for p in gpu.processes if p.get("foreign")))
        if gpu.bound_job is not None:
            bound.add_metric([*labels, str(gpu.bound_job)], 1)
    return [fb_used, fb_free, util, total, used, free, healthy, foreign, bound]


def cpu_slot_families(slots: int, bound: int) -> list[Metric]:
    return [
        GaugeMetricFamily("ftq_cpu_slots", "CPU slots for gpus: 0 jobs (FTQ_CPU_SLOTS).", value=slots),
        GaugeMetricFamily("ftq_cpu_slots_bound", "CPU slots held by a job.", value=bound),
    ]


def daemon_families(version: str, problems: Sequence[str]) -> list[Metric]:
    info = GaugeMetricFamily("ftq_build_info", "1, with the daemon's version as a label.", labels=["version"])
    info.add_metric([version], 1)
    healthy = GaugeMetricFamily(
        "ftq_daemon_healthy",
        "1 when GET /healthz would answer 200, 0 when it names problems.",
        value=0 if problems else 1,
    )
    return [info, healthy]


def _bucket_label(bound: float) -> str:
    return f"{bound:g}" if bound != int(bound) else f"{bound:.1f}"
