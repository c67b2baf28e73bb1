#!/usr/bin/env python3
"""A plain HTTP binary-cache store for Kiln's tests, as Nix's `http://` store
expects one: GET/HEAD serve files under ROOT, PUT writes them.

Prints its port on the first line of stdout. Records every request so a test
can check that nothing was written twice (`GET /_test/state`), can require an
`Authorization` header (`--auth VALUE`), and can fail one PUT with 503 and
`Retry-After: 1` after N successful ones (`--fail-put-after N`) to simulate
an interrupted upload, and can answer HEAD of NARs slowly (`--delay-nar-head S`) so
that a client holds finished NARs while it waits. Standard library only.
"""

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("root")
parser.add_argument("--auth")
parser.add_argument("--fail-put-after", type=int)
parser.add_argument("--delay-nar-head", type=float, default=0.0)
args = parser.parse_args()

lock = threading.Lock()
state = {"puts": {}, "requests": 0, "failed_puts": 0}


def key_path(path):
    key = path.split("?", 1)[0].lstrip("/")
    if not key or ".." in key.split("/"):
        return None, None
    return key, os.path.join(args.root, key)


class Store(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *a):
        if os.environ.get("KILN_TEST_SERVER_LOG"):
            sys.stderr.write("http_store: " + (fmt % a) + "\n")

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def authorised(self, write):
        """Reads are open (Nix substitutes anonymously), writes need the
        header; a wrong header is refused on any request."""
        given = self.headers.get("Authorization")
        if args.auth and (given is not None or write) and given != args.auth:
            self.reply(401, b"missing or wrong Authorization header\n")
            return False
        return True

    def do_GET(self):
        with lock:
            state["requests"] += 1
        if self.command == "HEAD" and self.path.startswith("/nar/") and args.delay_nar_head:
            time.sleep(args.delay_nar_head)
        if self.path == "/_test/state":
            with lock:
                body = json.dumps(state).encode()
            return self.reply(200, body, [("Content-Type", "application/json")])
        if not self.authorised(write=False):
            return
        key, path = key_path(self.path)
        if key is None or not os.path.isfile(path):
            return self.reply(404, b"not found\n")
        with open(path, "rb") as f:
            self.reply(200, f.read())

    do_HEAD = do_GET

    def do_PUT(self):
        length = int(self.headers.get("Content-Length", "-1"))
        if length < 0:
            return self.reply(411, b"Content-Length required\n")
        body = self.rfile.read(length)
        if not self.authorised(write=True):
            return
        key, path = key_path(self.path)
        if key is None:
            return self.reply(400, b"bad key\n")
        with lock:
            done = sum(state["puts"].values())
            if args.fail_put_after is not None and done >= args.fail_put_after and state["failed_puts"] == 0:
                state["failed_puts"] += 1
                fail = True
            else:
                state["puts"][key] = state["puts"].get(key, 0) + 1
                fail = False
        if fail:
            return self.reply(503, b"simulated outage\n", [("Retry-After", "1")])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(body)
        os.replace(tmp, path)
        self.reply(201)


server = ThreadingHTTPServer(("127.0.0.1", 0), Store)
print(server.server_address[1], flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    sys.exit(0)
