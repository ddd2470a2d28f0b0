"""`ftq serve`: settings, logging, uvicorn."""

from __future__ import annotations

import logging

import uvicorn
from pydantic import ValidationError

from server.app import create_app
from server.settings import Settings


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"FTQ_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"ftq: bad setting — {problems}") from exc


def serve(host: str, port: int) -> None:
    settings = load_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
