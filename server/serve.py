"""`ftq serve`: settings, the rule for non-loopback addresses, logging, uvicorn (through server/http_edge.py)."""

from __future__ import annotations

import ipaddress
import logging

from pydantic import ValidationError

from server import http_edge
from server.app import create_app
from server.lock import DataDirLock, DataDirLocked
from server.settings import Settings


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"FTQ_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"ftq: bad setting — {problems}") from exc


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_problem(host: str, settings: Settings, insecure: bool) -> str | None:
    """Why serving on `host` would be unsafe with these settings, or None: anyone reaching it could run jobs."""
    if is_loopback(host) or settings.api_token or insecure:
        return None
    return (
        f"ftq: refusing to serve on {host}, an address other machines can reach, without FTQ_API_TOKEN: "
        "anyone who reaches it could submit, cancel and read jobs. Set a token, e.g. "
        "`export FTQ_API_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')` (clients send it "
        "from the same variable), or serve on 127.0.0.1, or pass --insecure if only people you trust can reach "
        "this address (e.g. a container port published on the host's loopback only)."
    )


def serve(host: str, port: int, insecure: bool = False) -> None:
    settings = load_settings()
    problem = exposure_problem(host, settings, insecure)
    if problem:
        raise SystemExit(problem)
    try:  # before uvicorn: a second daemon on this data dir must not even bind its port
        lock = DataDirLock(settings.data_dir).acquire()
    except DataDirLocked as exc:
        raise SystemExit(f"ftq: {exc}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    wildcard = host.strip("[]") in ("", "0.0.0.0", "::")
    # An address it is asked to listen on is a name it answers to; a wildcard names none.
    app = create_app(settings, lock=lock, extra_hosts=() if wildcard else (host,))
    if not is_loopback(host) and not settings.api_token:
        logging.getLogger("ftq").warning("serving on %s without FTQ_API_TOKEN (--insecure)", host)
    try:
        http_edge.run(app, host, port, settings)
    finally:
        lock.release()
