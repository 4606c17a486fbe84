"""The soak's webhook receiver: a real HTTP server on loopback that verifies each delivery's Standard
Webhooks signature with the reference verifier (the ``standardwebhooks`` package) and records it."""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


class Receiver:
    """Answers 200 to a verified delivery, 400 to one whose signature does not verify."""

    def __init__(self, secret: str) -> None:
        self.verifier = Webhook(secret)
        self.lock = threading.Lock()
        self.deliveries = 0
        self.unverified = 0
        self.events: dict[str, str] = {}  # job id -> event type (the last delivered)
        self.repeats: Counter[str] = Counter()  # job ids told more than once (at least once delivery)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {name.lower(): value for name, value in self.headers.items()}
                status = 200 if receiver.record(body, headers) else 400
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def record(self, body: bytes, headers: dict[str, str]) -> bool:
        try:
            event = self.verifier.verify(body, headers)
        except Exception:  # the verifier's WebhookVerificationError, or a body that is not JSON
            with self.lock:
                self.deliveries += 1
                self.unverified += 1
            return False
        job_id = str(event.get("data", {}).get("id", ""))
        with self.lock:
            self.deliveries += 1
            if job_id in self.events:
                self.repeats[job_id] += 1
            self.events[job_id] = str(event.get("type", ""))
        return True

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
