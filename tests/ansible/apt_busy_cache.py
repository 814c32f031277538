"""A package cache as apt-cacher-ng is when several nodes refresh one index at once: it
answers the first request for the release's InRelease with its "503 Error with cache
data" and relays everything else (to the proxy given, or straight to the mirror).

Runs inside a local node (its python3, standard library only):
``python3 apt_busy_cache.py PORT [UPSTREAM_PROXY_URL]``; prints each request's path and
status, one per line."""

from __future__ import annotations

import http.client
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BUSY = b"<html><body><h1>503 Error with cache data, please consult apt-cacher.err</h1></body></html>"


class BusyCache(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: urllib.parse.SplitResult | None = None
    answered_busy = False

    def do_GET(self) -> None:
        if self.path.endswith("/dists/bookworm/InRelease") and not BusyCache.answered_busy:
            BusyCache.answered_busy = True
            self.answer(503, "Error with cache data, please consult apt-cacher.err", [], BUSY)
            return
        # apt asks a proxy for absolute URLs: pass them to the next proxy, or to the mirror
        url = urllib.parse.urlsplit(self.path)
        via = self.upstream or url
        target = self.path if self.upstream else url.path
        conn = http.client.HTTPConnection(via.hostname or "", via.port or 80, timeout=60)
        asked = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        conn.request("GET", target, headers=asked)
        with conn.getresponse() as response:
            body = response.read()
            keep = ("last-modified", "etag", "content-type", "date")
            headers = [(k, v) for k, v in response.getheaders() if k.lower() in keep]
            self.answer(response.status, response.reason, headers, body)
        conn.close()

    def answer(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        print(self.path, status, flush=True)
        self.send_response(status, reason)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] not in ("", "DIRECT"):
        BusyCache.upstream = urllib.parse.urlsplit(sys.argv[2])
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), BusyCache).serve_forever()
