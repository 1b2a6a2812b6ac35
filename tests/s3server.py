"""moto's S3 server on loopback, with a count of the response-body bytes it sends for GETs.

Run as a script (``python tests/s3server.py``): it builds the same WSGI application as moto's
``moto_server`` command (server mode: a real HTTP server, separate process), puts a small
counting layer in front of it, binds an ephemeral port on 127.0.0.1, prints ``port <N>`` on
stdout and serves until SIGTERM. No free-port guessing, so no race with other processes.

The counting layer sees every request first. For each ``GET`` of an object (a path
``/<bucket>/<key>``, path-style addressing, which snapdb uses with a custom endpoint) it adds the
body bytes moto's response yields, as sent to the client, to a per-path counter. Bucket listings
(``GET /<bucket>?list-type=2``) are not object reads and are not counted. Two control paths,
which no S3 request can use (bucket names cannot start with ``_``), read and reset the counters:

- ``GET /_counters/get-bytes?prefix=<bucket>/<key prefix>`` → ``{"bytes": n, "requests": m}``
- ``POST /_counters/reset``
- ``POST /_counters/break?prefix=<bucket>/<key prefix>&after=<n>``: the next GET of a matching
  object sends `n` body bytes and then drops the connection (a network failure midway)
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from urllib.parse import parse_qs

CONTROL = "/_counters/"


class CountingApp:
    """WSGI middleware: count GET response-body bytes per object path."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.counts: dict[str, list[int]] = {}  # "bucket/key" -> [bytes, requests]
        self.breaks: dict[str, int] = {}  # key prefix -> bytes to send before dropping the connection

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith(CONTROL):
            return self._control(path[len(CONTROL):], environ, start_response)
        obj = path.lstrip("/")
        if environ.get("REQUEST_METHOD") != "GET" or "/" not in obj.rstrip("/"):
            return self.inner(environ, start_response)
        status: list[str] = []

        def recording_start(code, headers, exc_info=None):
            status.append(code)
            return start_response(code, headers, exc_info)

        with self.lock:
            armed = next((p for p in self.breaks if obj.startswith(p)), None)
            cut = self.breaks.pop(armed) if armed is not None else None
        return self._counted(obj, self.inner(environ, recording_start), status, cut)

    def _counted(self, obj: str, body, status: list[str], cut: int | None):
        sent = 0
        try:
            for chunk in body:
                if cut is not None and sent + len(chunk) >= cut:
                    piece = chunk[:cut - sent]
                    sent += len(piece)
                    yield piece
                    # werkzeug treats this as a dropped connection and closes the socket
                    raise ConnectionAbortedError("test server: connection dropped on request")
                sent += len(chunk)
                yield chunk
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
            if status and status[0][:1] == "2":
                with self.lock:
                    entry = self.counts.setdefault(obj, [0, 0])
                    entry[0] += sent
                    entry[1] += 1

    def _control(self, what: str, environ, start_response):
        if what == "get-bytes":
            prefix = parse_qs(environ.get("QUERY_STRING", "")).get("prefix", [""])[0]
            with self.lock:
                picked = [v for k, v in self.counts.items() if k.startswith(prefix)]
            body = json.dumps({"bytes": sum(v[0] for v in picked), "requests": sum(v[1] for v in picked)})
        elif what == "break" and environ.get("REQUEST_METHOD") == "POST":
            query = parse_qs(environ.get("QUERY_STRING", ""))
            with self.lock:
                self.breaks[query["prefix"][0]] = int(query["after"][0])
            body = "{}"
        elif what == "reset" and environ.get("REQUEST_METHOD") == "POST":
            with self.lock:
                self.counts.clear()
            body = "{}"
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"unknown control path\n"]
        data = body.encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]


def main() -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    app = CountingApp(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"port {server.server_port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
