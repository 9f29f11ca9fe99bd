"""``/healthz`` for probes and ``/metrics`` for Prometheus."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from facesortd.telemetry import CONTENT_TYPE
from facesortd.web.context import state

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """200 when the store answers and (under the daemon) every thread runs; else 503 with why."""
    problems = []
    try:
        with state("store").read() as conn:
            conn.execute("SELECT 1").fetchone()
    except Exception as exc:
        problems.append(f"store: {exc}")
    telemetry = state("telemetry")
    if state("daemon_telemetry") and not telemetry.up.get():
        problems.append(getattr(telemetry, "unhealthy_reason", None) or "daemon unhealthy")
    body = {"status": "ok" if not problems else "unhealthy", "problems": problems}
    if state("daemon_telemetry"):
        snap = telemetry.snapshot()
        body.update(queue_depth=snap["queue_depth"], uptime_s=snap["uptime_s"])
    return jsonify(body), (200 if not problems else 503)


@bp.get("/metrics")
def metrics():
    """prometheus_client's ``generate_latest`` of the telemetry's registry, in text format 0.0.4."""
    return Response(state("telemetry").render(state("store")), content_type=CONTENT_TYPE)
