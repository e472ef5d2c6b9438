"""A tiny webhook receiver: records every notification Alertmanager (or Grafana) POSTs, as JSON lines.

`msml monitoring receiver --port P --out FILE`. Each line is `{"received_at": ..., "path": ..., "payload": {...}}`;
`GET /alerts` returns the recorded lines as a JSON list (what tests and the evidence read).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MAX_BODY = 1 << 20  # Alertmanager batches are small; refuse anything bigger than 1 MiB


def read_notifications(path: str | Path) -> list[dict]:
    """The notifications recorded in `path` (JSON lines), oldest first; [] when there are none yet."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make_server(host: str, port: int, out: str | Path) -> ThreadingHTTPServer:
    """An HTTP server appending each POSTed JSON body to `out`; call `serve_forever()` on it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY:
                return self._reply(400 if length <= 0 else 413, {"error": f"body of {length} bytes refused"})
            try:
                payload = json.loads(self.rfile.read(length))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                return self._reply(400, {"error": f"body is not JSON: {exc}"})
            record = {"received_at": time.time(), "path": self.path, "payload": payload}
            with lock, out.open("a") as f:
                f.write(json.dumps(record) + "\n")
            self._reply(200, {"status": "recorded"})

        def do_GET(self) -> None:
            if self.path.rstrip("/") in ("/alerts", ""):
                with lock:
                    return self._reply(200, read_notifications(out))
            if self.path == "/-/ready":
                return self._reply(200, {"status": "ready"})
            self._reply(404, {"error": f"no such path {self.path}"})

        def log_message(self, fmt: str, *args) -> None:  # one line per request on stderr, no reverse DNS
            print(f"{self.address_string()} {fmt % args}", flush=True)

    return ThreadingHTTPServer((host, port), Handler)


def serve(host: str, port: int, out: str | Path) -> None:
    server = make_server(host, port, out)
    print(f"recording notifications POSTed to http://{host}:{port}/ in {out}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
