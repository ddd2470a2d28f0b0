"""The tables (jobs, attempts, metric records, leases, events) and the API's schema family.

`JobCreate` comes in, `JobPublic` / `JobsPublic` go out, the table models stay
inside (full-stack-fastapi-template's models.py). Times are aware UTC datetimes
and leave the API as ISO 8601 with a `Z`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, get_args

from pydantic import ConfigDict, PlainSerializer, create_model
from pydantic import Field as PydanticField
from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from worker.spec.job import JobSpec


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(when: datetime | None) -> datetime | None:
    """A time read back from the database: SQLite returns datetimes without their zone, and ours are all UTC."""
    return when.replace(tzinfo=timezone.utc) if when is not None and when.tzinfo is None else when


class Job(SQLModel, table=True):
    __tablename__ = "jobs"

    id: int | None = Field(default=None, primary_key=True)
    name: str
    state: str = Field(index=True)
    priority: int = Field(default=0, index=True)
    gpus: int
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    submitted_at: datetime = Field(default_factory=utcnow, index=True)
    started_at: datetime | None = None
    ended_at: datetime | None = None
    reason: str | None = None
    need_bytes: int | None = Field(default=None, sa_type=BigInteger)
    estimate: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    gpu_ids: list[int] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    oom_retries: int = 0
    node_retries: int = 0  # automatic requeues after the job's node left the cluster (spec node_retry)
    tried: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, default=list))


class Attempt(SQLModel, table=True):
    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("job_id", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    number: int
    state: str = Field(index=True)
    resources: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    cuda_visible_devices: str | None = None
    run_dir: str
    pid: int | None = None
    pid_start_time: int | None = None
    started_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None
    exit_code: int | None = None
    reason: str | None = None
    log_tail: str | None = None
    last_step: int | None = None
    total_steps: int | None = None
    peak_memory_gib: float | None = None
    metrics_offset: int = 0
    cancel_requested_at: datetime | None = None
    settings: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    resumed_from_step: int | None = None
    adopted: bool = False
    last_record_at: datetime | None = None  # when the daemon last read a record of this attempt
    record_interval_s: float | None = None  # the usual time between its records (a moving average)
    node: str | None = None  # the Ray node of its (first) worker; None on the daemon's own machine
    # A job across nodes: every worker, in node-rank order, as {"node", "pid", "start_time"}.
    workers: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class MetricRecord(SQLModel, table=True):
    __tablename__ = "metrics"
    # A job's latest record of a kind is one seek, however many records the job has: GET /jobs/{id} and
    # GET /jobs ask for it on every poll. It leads with job_id, so it serves job_id's lookups too.
    __table_args__ = (Index("ix_metrics_job_id_kind_id", "job_id", "kind", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id")
    attempt_id: int = Field(foreign_key="attempts.id", index=True)
    kind: str
    step: int = Field(default=0, index=True)
    data: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    superseded: bool = Field(default=False, index=True)  # a later attempt resumed from an earlier step


class Event(SQLModel, table=True):
    """One entry of the event log that GET /events and /jobs/{id}/events stream: a job's state change, a record
    of a worker, a GPU snapshot, an alert.

    Written in the same transaction as what it reports (the state change, the records), so the log never says
    what the database does not. Ids only grow (AUTOINCREMENT: never reused, even after the newest row goes) and
    SQLite has one writer at a time, so once id N is visible every smaller id is too: a client that resumes
    after N misses nothing and sees nothing twice.
    """

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_job_id_id", "job_id", "id"), {"sqlite_autoincrement": True})

    id: int | None = Field(default=None, primary_key=True)
    job_id: int | None = None  # None: a GPU snapshot or a machine's alert
    kind: str
    data: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class Lease(SQLModel, table=True):
    """One GPU (by UUID) or CPU slot held by one attempt; the primary key makes a double lease impossible."""

    __tablename__ = "leases"

    resource: str = Field(primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    attempt_id: int = Field(foreign_key="attempts.id", index=True)
    created_at: datetime = Field(default_factory=utcnow)


class Daemon(SQLModel, table=True):
    """The one row the running daemon rewrites every few seconds, proving the database still takes writes."""

    __tablename__ = "daemon"

    id: int = Field(default=1, primary_key=True)
    pid: int
    started_at: datetime = Field(default_factory=utcnow)
    beat_at: datetime = Field(default_factory=utcnow)


# ---- the API's schemas ----

JobCreate = JobSpec


def _utc_iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


# A time as the API writes it, ISO 8601 UTC with a Z: every datetime field of a schema below is one. On those
# fields only, where a serializer of every field ("*") called Python once for each field of each answer.
UtcTime = Annotated[datetime, PlainSerializer(_utc_iso, when_used="json")]


class _Public(SQLModel):
    pass


class AttemptPublic(_Public):
    number: int
    state: str
    resources: list[str]
    cuda_visible_devices: str | None
    run_dir: str
    pid: int | None
    started_at: UtcTime
    ended_at: UtcTime | None
    exit_code: int | None
    reason: str | None
    log_tail: str | None
    last_step: int | None
    total_steps: int | None
    peak_memory_gib: float | None
    settings: dict[str, Any] | None = None
    resumed_from_step: int | None = None
    adopted: bool = False
    last_record_at: UtcTime | None = None  # when the worker wrote the newest record the daemon has read
    record_interval_s: float | None = None  # its usual time between records
    node: str | None = None  # the Ray node it runs on (its first worker's, for a job across nodes)


class Progress(SQLModel):
    current_steps: int
    total_steps: int | None
    percentage: float | None


class JobSummary(_Public):
    """A job in a list; `waiting` says why a queued job is not running yet."""

    id: int
    name: str
    state: str
    priority: int
    gpus: int
    submitted_at: UtcTime
    started_at: UtcTime | None
    ended_at: UtcTime | None
    reason: str | None
    bound_resources: list[str] = []
    cuda_visible_devices: str | None = None
    progress: Progress | None = None
    loss: float | None = None
    waiting: str | None = None
    need_gib: float | None = None
    # A running job whose worker has written nothing for several of its usual intervals: a hint, not a verdict.
    stalled_for_s: float | None = None


class JobPublic(JobSummary):
    spec: dict[str, Any]
    estimate: dict[str, Any] | None = None
    attempts: list[AttemptPublic]
    latest_metrics: dict[str, Any] | None
    final_loss: float | None = None
    wall_time_s: float | None = None
    result: str | None = PydanticField(
        default=None, description="Where the trained adapter or model is, once the job has succeeded."
    )
    notes: list[str] = PydanticField(
        default_factory=list,
        description="What ftq did with keys the spec alone does not show: those accepted without effect, and why.",
    )


class JobsPublic(SQLModel):
    data: list[JobSummary]
    count: int
    offset: int
    limit: int


class MetricsPublic(SQLModel):
    data: list[dict[str, Any]]
    count: int


class GpuPublic(SQLModel):
    uuid: str
    index: int
    name: str
    memory_total: int | None
    memory_free: int | None
    memory_used: int | None
    utilization: int | None
    pci_bus_id: str | None = None
    processes: list[dict[str, Any]]
    healthy: bool
    error: str | None
    bound_job: int | None
    links: dict[int, int | None] = {}  # other GPU's index -> distance (0 NVLink ... 60 across sockets)
    node: str = ""  # the Ray node it is on ("" on the daemon's own machine); uuid is then "<node>/<uuid>"


class NodePublic(SQLModel):
    """A node of the Ray cluster the daemon runs jobs on, as its agent last reported it."""

    node: str  # the Ray node id; its GPUs' `node`
    address: str | None = None  # the node's IP address
    hostname: str | None = None
    state: str  # usable | lost | unusable (problem says why: e.g. it does not see the shared data dir)
    problem: str | None = None
    gpus: int = 0
    probe: str | None = None  # what its agent reads the GPUs with: NVML, or fake GPUs from its label


class GpusPublic(SQLModel):
    probe: str
    gpus: list[GpuPublic]
    cpu_slots: int
    cpu_slots_bound: dict[str, int]
    nodes: list[NodePublic] = []  # on a Ray cluster (FTQ_RAY_ADDRESS): every node; empty otherwise


# What a requeue may change; everything else stays as submitted. Each field takes what the same
# JobSpec field takes (its type and limits come from JobSpec itself, so the two never drift), or null.
REQUEUE_FIELDS = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "gradient_checkpointing",
    "cutoff_len",
    "gpus",
    "gpu_ids",
    "deepspeed",
)


def _like_spec_field(name: str) -> Any:
    spec_field = JobSpec.model_fields[name]
    annotation = spec_field.annotation
    args = [a for a in get_args(annotation) if a is not type(None)] if type(None) in get_args(annotation) else []
    base = args[0] if len(args) == 1 else annotation
    constrained = Annotated[(base, *spec_field.metadata)] if spec_field.metadata else base
    return (constrained | None, PydanticField(default=None, description=spec_field.description))


RequeueRequest = create_model(  # type: ignore[call-overload]
    "RequeueRequest",
    __config__=ConfigDict(extra="forbid"),
    __doc__="What a requeue may change (each as in the job spec); everything else stays as submitted.",
    **{name: _like_spec_field(name) for name in REQUEUE_FIELDS},
)
