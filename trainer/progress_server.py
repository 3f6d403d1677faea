"""GET /progress on rank 0: the operator polls it, so workers need no Kubernetes API rights.

A stdlib HTTP server in a daemon thread serves the latest snapshot; port 0 or unset disables it, and a busy
port only warns (training matters more than its progress report).
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .api.result import ProgressReport
from .api.contract import PROGRESS_PATH

log = logging.getLogger(__name__)


class ProgressServer:
    """Rank 0's latest ProgressReport and the HTTP server that hands it to the operator."""

    def __init__(self, total_steps: int, job_uid: str | None = None) -> None:
        self._lock = threading.Lock()
        self._state = ProgressReport(total_steps=total_steps, job_uid=job_uid)
        self._server: ThreadingHTTPServer | None = None

    def update(self, **values: Any) -> None:
        """Set ProgressReport fields by their Python names (validated: a typo raises)."""
        with self._lock:
            state = self._state.model_copy(deep=True)
            for name, value in values.items():
                setattr(state, name, value)
            self._state = state

    def snapshot(self) -> ProgressReport:
        with self._lock:
            return self._state.model_copy(deep=True)

    def serve(self, port: int, host: str = "0.0.0.0") -> int | None:
        """Serve on `port` in a daemon thread; returns the bound port, or None when disabled or busy."""
        if port <= 0:
            return None
        progress = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.split("?")[0] != PROGRESS_PATH:
                    self.send_error(404)
                    return
                body = progress.snapshot().model_dump_json(by_alias=True).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                return None

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as error:
            log.warning("progress endpoint disabled: cannot listen on port %d: %s", port, error)
            return None
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="progress", daemon=True).start()
        return self._server.server_address[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
