"""All of the daemon's settings in one pydantic-settings object (prefix FTQ_).

A bad value fails at start with the variable's name, never halfway through a job.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.spec.layout import DEFAULT_LOG_MAX_BYTES
from worker.spec.units import GIB


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FTQ_", extra="ignore")

    data_dir: Path = Field(default=Path("ftq-data"), description="Database and run dirs live here.")
    database_url: str | None = Field(default=None, description="Defaults to SQLite in data_dir.")
    fake_gpus: str | None = Field(default=None, description="e.g. 2x24GiB: simulate GPUs instead of NVML.")
    cpu_slots: int = Field(default=1, ge=0, le=256, description="Jobs with gpus: 0 run this many at once.")
    cancel_grace_s: float = Field(default=10.0, ge=0, le=3600, description="SIGTERM, then SIGKILL after this.")
    api_token: str | None = Field(
        default=None,
        description="When set, every route but /healthz and the API docs needs it as a Bearer token.",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names the API answers to besides localhost, 127.0.0.1 and ::1 (comma-separated; "
        "'*' for any): a request by another name is refused, so a DNS-rebinding web page cannot reach the daemon.",
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Web origins (scheme://host[:port], comma-separated) whose pages may send writes to the API, "
        "besides the daemon's own origin.",
    )
    max_body_bytes: int = Field(
        default=1 << 20, ge=1024, le=GIB, description="A request body larger than this is refused with 413."
    )
    input_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [Path.cwd()],
        description="Directories a spec may read models and data from (os.pathsep-separated); "
        "relative spec paths resolve against the first.",
    )
    output_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Directories a spec's output_dir and tokenized_path may name (os.pathsep-separated; "
        "relative ones resolve against the first). Default: the data dir.",
    )
    allow_remote_code: bool = Field(
        default=False,
        description="Let specs set trust_remote_code: true, which runs the model directory's Python files as the "
        "daemon's user, with everything that user can read and write.",
    )
    memory_margin_gib: float = Field(
        default=1.0, ge=0, le=1024, description="Free GPU memory a job must leave beyond its estimate."
    )
    worker_module: str = Field(
        default="worker",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
        description="Run as `python -m MODULE RUN_DIR`; benchmarks swap in a stand-in that only holds GPUs.",
    )
    tick_s: float = Field(default=1.0, gt=0, le=60, description="The scheduler's periodic tick.")
    tail_interval_s: float = Field(
        default=0.05,
        gt=0,
        le=10,
        description="How often running jobs' metrics are read (between the ticks, nothing else is done then).",
    )
    stall_factor: float = Field(
        default=5.0, ge=1, le=1000, description="A job is shown stalled after this many of its usual record intervals."
    )
    stall_min_s: float = Field(
        default=60.0, gt=0, le=86_400, description="...and never before this many seconds without a record."
    )
    daemon_fault: str | None = Field(
        default=None,
        pattern=r"^sigkill@(after-begin|after-spawn|after-pid|after-go)$",
        description="Tests only: the daemon SIGKILLs itself at this point of a worker's start.",
    )
    api_threads: int = Field(
        default=40,
        ge=1,
        le=1000,
        description="API requests served in threads at once; the database pool keeps a connection for each, "
        "and for the scheduler.",
    )

    alert_vram_ratio: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Alert (an `alert` event on /events, a log line, the webhook) when a GPU's used memory "
        "crosses this share of its total, e.g. 0.95. Unset: no memory alerts.",
    )
    webhook_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="Each alert is also POSTed here as JSON (in the background, with bounded retries).",
    )
    sse_ping_s: float = Field(
        default=15.0, gt=0, le=3600, description="Event streams send a heartbeat comment this often."
    )
    max_connections: int = Field(
        default=4096,
        ge=16,
        le=1_000_000,
        description="Connections held at once (fewer if the open-file limit allows fewer); over it, the one that "
        "has waited longest for its request headers is closed.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="A connection that has not sent a request's complete headers within this is closed.",
    )
    send_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="A client that takes no data for this long while a response (an event stream) waits for it "
        "is disconnected; an event stream resumes with Last-Event-ID.",
    )
    gpu_event_interval_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="A `gpus` event on /events at most this often, and only when a reading or a holder changed.",
    )
    metrics_queued_jobs: int = Field(
        default=100,
        ge=0,
        le=10_000,
        description="GET /metrics gives per-job series to this many queued jobs, those that have waited longest; "
        "every queued job is in the aggregates (ftq_jobs, ftq_queue_longest_wait_seconds).",
    )
    metrics_ended_jobs: int = Field(
        default=100,
        ge=0,
        le=10_000,
        description="GET /metrics gives per-job series to this many jobs that ended in the last hour, the latest.",
    )
    worker_log_max_bytes: int = Field(
        default=DEFAULT_LOG_MAX_BYTES,
        ge=64 << 10,
        le=1 << 40,
        description="A worker's log (worker.log and the one older part it keeps, worker.log.1) never holds more "
        "than this; the oldest output goes first.",
    )
    ray_address: str | None = Field(
        default=None,
        description="Run jobs on a Ray cluster: auto (the cluster this machine is part of), ray://HOST:10001, or "
        "a GCS address HOST:6379. The data and input dirs must be the same paths on every node "
        "(needs pip install 'ftq[ray]'). Unset: jobs run on this machine.",
    )

    @model_validator(mode="after")
    def _fake_gpus_are_a_node_label_on_a_cluster(self) -> Settings:
        if self.ray_address is not None and self.fake_gpus is not None:
            raise ValueError(
                "FTQ_FAKE_GPUS and FTQ_RAY_ADDRESS are both set: on a Ray cluster each node's agent reads its own "
                "GPUs; give a node fake GPUs with the node label ftq.fake_gpus (ray start --labels "
                "ftq.fake_gpus=2x24GiB), and unset FTQ_FAKE_GPUS"
            )
        return self

    @field_validator("input_dirs", "output_dirs", mode="before")
    @classmethod
    def _split_input_dirs(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in value.split(os.pathsep) if part.strip()]
        return value

    @field_validator("input_dirs")
    @classmethod
    def _input_dirs_exist(cls, dirs: list[Path]) -> list[Path]:
        if not dirs:
            raise ValueError("FTQ_INPUT_DIRS is empty; name at least one directory jobs may read from")
        return _directories("FTQ_INPUT_DIRS", dirs)

    @field_validator("output_dirs")
    @classmethod
    def _output_dirs_exist(cls, dirs: list[Path]) -> list[Path]:
        return _directories("FTQ_OUTPUT_DIRS", dirs)

    @property
    def writable_dirs(self) -> list[Path]:
        """Where jobs may write their output_dir and tokenized_path: FTQ_OUTPUT_DIRS, or the data dir."""
        return self.output_dirs or [self.data_dir.resolve()]

    @field_validator("fake_gpus", "api_token", "webhook_url", "ray_address", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return value.strip() or None if isinstance(value, str) else value

    @field_validator("ray_address")
    @classmethod
    def _ray_address_form(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"auto|ray://[^\s/]+|[^\s/:]+:\d+", value):
            raise ValueError(
                f"{value!r} is not a Ray address; write auto, ray://HOST:10001 (Ray Client) or HOST:6379 (the GCS)"
            )
        return value

    @field_validator("allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_are_names(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if "/" in host or " " in host:
                raise ValueError(f"{host!r} is not a host name; write names like gpu-box or 10.0.0.5, without a scheme")
        return hosts

    @field_validator("allowed_origins")
    @classmethod
    def _origins_are_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            scheme, _, rest = origin.partition("://")
            if scheme not in ("http", "https") or not rest or "/" in rest.rstrip("/"):
                raise ValueError(f"{origin!r} is not an origin; write scheme://host[:port], e.g. https://ui.example")
        return [origin.rstrip("/").lower() for origin in origins]

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'ftq.db'}"

    @property
    def memory_margin_bytes(self) -> int:
        return int(self.memory_margin_gib * GIB)

    @property
    def runs_dir(self) -> Path:
        return self.data_dir.resolve() / "runs"


def _directories(variable: str, dirs: list[Path]) -> list[Path]:
    """The directories resolved; the first that is not one fails the setting, named."""
    for d in dirs:
        if not d.is_dir():
            raise ValueError(f"{variable}: {d} is not a directory")
    return [d.resolve() for d in dirs]
