"""`ftq serve`: settings, logging, uvicorn."""

from __future__ import annotations

import logging

import uvicorn
from pydantic import ValidationError

from server.app import create_app
from server.lock import DataDirLock, DataDirLocked
from server.settings import Settings


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"FTQ_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"ftq: bad setting — {problems}") from exc


def serve(host: str, port: int) -> None:
    settings = load_settings()
    try:  # before uvicorn: a second daemon on this data dir must not even bind its port
        lock = DataDirLock(settings.data_dir).acquire()
    except DataDirLocked as exc:
        raise SystemExit(f"ftq: {exc}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        uvicorn.run(create_app(settings, lock=lock), host=host, port=port, log_level="info")
    finally:
        lock.release()
