"""A git smart-HTTP server on 127.0.0.1, laid out like lore: <base>/N is epoch N.

Real git on both ends: requests are handed to `git http-backend` (the CGI
program web servers run for git, as lore's does), so shallow clones
(--depth, --shallow-since) work as they do against lore, which the dumb
protocol cannot do. Every request's path and User-Agent are recorded.
"""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import threading
from pathlib import Path

_EPOCH_PATH = re.compile(r"/(?P<name>[^/]+)/(?P<epoch>\d+)(?P<rest>/.*)")


class GitHttp:
    """Serve the v2 inbox at `inbox` (its git/N.git) as http://127.0.0.1:PORT/<name>/N."""

    def __init__(self, inbox: Path, name: str = "kvm") -> None:
        self.inbox = inbox
        self.name = name
        self.requests: list[tuple[str, str]] = []
        """(path, User-Agent) of every request, in order."""
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._handle(self)

            def do_POST(self) -> None:
                server._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{self.name}"

    def start(self) -> GitHttp:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.thread.join()
        self.httpd.server_close()

    def _handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        path, _, query = req.path.partition("?")
        with self.lock:
            self.requests.append((path, req.headers.get("User-Agent", "")))
        found = _EPOCH_PATH.fullmatch(path)
        if found is None or found["name"] != self.name:
            req.send_error(404)
            return
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.inbox / "git"),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": f"/{found['epoch']}.git{found['rest']}",
            "QUERY_STRING": query,
            "REQUEST_METHOD": req.command,
            "CONTENT_TYPE": req.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_CONTENT_ENCODING": req.headers.get("Content-Encoding", ""),
            "GIT_PROTOCOL": req.headers.get("Git-Protocol", ""),
        }
        result = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
        )
        head, _, payload = result.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = result.stdout.partition(b"\n\n")
        headers = [line.split(":", 1) for line in head.decode().splitlines() if ":" in line]
        status = next((v.strip() for k, v in headers if k.lower() == "status"), "200 OK")
        code, _, reason = status.partition(" ")
        req.send_response(int(code), reason or None)
        for key, value in headers:
            if key.lower() != "status":
                req.send_header(key, value.strip())
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        req.wfile.write(payload)
