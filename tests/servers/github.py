#!/usr/bin/env python3
"""A stand-in GitHub REST API for `kiln serve` tests: commit statuses and the
token's repository list, in GitHub's shapes.

POST /repos/OWNER/REPO/statuses/SHA checks what it receives the way GitHub
does and answers anything wrong with 4xx and a message: the Bearer token
exactly, a 40-hex SHA, a JSON body with `state` one of pending, success,
failure, error, a non-empty `context`, a `description` of at most 140
characters and an optional `target_url` that is an absolute URL. It answers
201 with a status object, as GitHub does.

GET /user/repos answers the repositories given with --repo (JSON objects), on
one page. GET /repos/OWNER/REPO/pulls answers the JSON array in the file given
with --pulls-file, read at each request (none when it does not exist), with
the pulls whose base repository is OWNER/REPO. GET /_test/state shows every status accepted, in order, and the
count of refused requests. --rate-limit N answers the first N status posts
with 403 and GitHub's primary rate-limit headers (remaining 0, reset in one
second), so a client must wait and post again.

Usage: github.py --token TOKEN [--repo JSON]... [--rate-limit N] [--pulls-file PATH]
Binds 127.0.0.1 on a free port and prints the port as its first line.
Python 3 standard library only.
"""

import argparse
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SHA = re.compile(r"^[0-9a-f]{40}$")
STATES = {"pending", "success", "failure", "error"}
STATUS_PATH = re.compile(r"^/repos/([^/]+)/([^/]+)/statuses/([^/]+)$")
PULLS_PATH = re.compile(r"^/repos/([^/]+)/([^/]+)/pulls$")


class State:
    def __init__(self, args):
        self.lock = threading.Lock()
        self.token = args.token
        self.repos = [json.loads(r) for r in args.repo]
        self.rate_limited = args.rate_limit
        self.pulls_file = args.pulls_file
        self.statuses = []
        self.refused = []
        self.next_id = 1


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("github.py: " + (fmt % args) + "\n")

    def answer(self, code, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def refuse(self, code, message):
        with STATE.lock:
            STATE.refused.append({"path": self.path, "code": code, "message": message})
        self.answer(code, {"message": message, "documentation_url": "https://docs.github.com/rest"})

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def authorised(self):
        return self.headers.get("Authorization") == "Bearer " + STATE.token

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/_test/state":
            with STATE.lock:
                return self.answer(200, {"statuses": STATE.statuses, "refused": STATE.refused})
        if not self.authorised():
            return self.refuse(401, "Bad credentials")
        if path == "/user/repos":
            return self.answer(200, STATE.repos)
        m = PULLS_PATH.match(path)
        if m:
            return self.answer(200, self.pulls("/".join(m.groups())))
        return self.refuse(404, "Not Found")

    def pulls(self, full_name):
        try:
            with open(STATE.pulls_file or "", encoding="utf-8") as f:
                pulls = json.load(f)
        except FileNotFoundError:
            return []
        return [p for p in pulls if (p.get("base", {}).get("repo") or {}).get("full_name") == full_name]

    def do_POST(self):
        raw = self.body()
        path = urlsplit(self.path).path
        m = STATUS_PATH.match(path)
        if not m:
            return self.refuse(404, "Not Found")
        if not self.authorised():
            return self.refuse(401, "Bad credentials")
        owner, repo, sha = m.groups()
        if not SHA.match(sha):
            return self.refuse(422, "No commit found for SHA: " + sha)
        try:
            body = json.loads(raw)
        except ValueError:
            return self.refuse(400, "Problems parsing JSON")
        state = body.get("state")
        context = body.get("context")
        description = body.get("description", "")
        target = body.get("target_url")
        if state not in STATES:
            return self.refuse(422, "state is not one of %s" % sorted(STATES))
        if not isinstance(context, str) or not context:
            return self.refuse(422, "context is missing")
        if not isinstance(description, str) or len(description) > 140:
            return self.refuse(422, "description is longer than 140 characters")
        if target is not None and not re.match(r"^https?://", target):
            return self.refuse(422, "target_url is not a URL")
        with STATE.lock:
            if STATE.rate_limited > 0:
                STATE.rate_limited -= 1
                limited = True
            else:
                limited = False
                status = {
                    "id": STATE.next_id,
                    "repository": owner + "/" + repo,
                    "sha": sha,
                    "state": state,
                    "context": context,
                    "description": description,
                    "target_url": target,
                    "at": time.time(),
                }
                STATE.next_id += 1
                STATE.statuses.append(status)
        if limited:
            reset = str(int(time.time()) + 1)
            return self.answer(
                403,
                {"message": "API rate limit exceeded for user ID 1."},
                [("x-ratelimit-limit", "5000"), ("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", reset)],
            )
        self.answer(201, dict(status, url="https://api.github.test/statuses/%d" % status["id"]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--token", required=True)
    parser.add_argument("--repo", action="append", default=[])
    parser.add_argument("--rate-limit", type=int, default=0)
    parser.add_argument("--pulls-file")
    args = parser.parse_args()
    global STATE
    STATE = State(args)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
