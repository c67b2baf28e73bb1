#!/usr/bin/env python3
"""A stand-in Attic server for tests: the API v1 calls `attic push` makes.

Speaks the shapes of attic's api/v1 (get_missing_paths.rs, upload_path.rs):
POST /_api/v1/get-missing-paths with {cache, store_path_hashes} answers
{missing_paths}; PUT /_api/v1/upload-path takes the NAR as the body and the
narinfo JSON in X-Attic-Nar-Info, or as a body preamble sized by
X-Attic-Nar-Info-Preamble-Size, and answers {kind, file_size,
frac_deduplicated}. Errors are {code, error, message} like Attic's.

It checks what it receives and answers anything wrong with a 4xx: the
bearer token (scheme in any case, as Attic parses it), the narinfo's field
names and types, `sha256:<hex>` NAR hashes, basename references,
`name:base64` signatures, and the NAR itself against nar_size and nar_hash.
Accepted NARs and narinfos are kept under --dir (nar/HASH.nar,
HASH.json); GET /_test/state shows what happened as JSON.

Usage: attic.py --cache NAME --token TOKEN --dir DIR
Binds 127.0.0.1 on a free port and prints the port as its first line.
Python 3 standard library only.
"""

import argparse
import base64
import binascii
import hashlib
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

STORE_HASH = re.compile(r"^[0-9a-df-np-sv-z]{32}$")
BASENAME = re.compile(r"^[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+$")
NAR_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
FIELDS = {
    "cache": str,
    "store_path_hash": str,
    "store_path": str,
    "references": list,
    "system": (str, type(None)),
    "deriver": (str, type(None)),
    "sigs": list,
    "ca": (str, type(None)),
    "nar_hash": str,
    "nar_size": int,
}
MAX_PREAMBLE = 1 << 20


class Rejected(Exception):
    def __init__(self, status, error, message):
        super().__init__(message)
        self.status = status
        self.error = error


class State:
    def __init__(self, args):
        self.cache = args.cache
        self.token = args.token
        self.dir = args.dir
        self.lock = threading.Lock()
        self.queries = []
        self.objects = {}  # store path hash -> accepted narinfo plus how it came
        self.uploads = 0
        self.duplicates = []
        self.rejections = []
        os.makedirs(os.path.join(self.dir, "nar"), exist_ok=True)

    def snapshot(self):
        return {
            "queries": self.queries,
            "objects": self.objects,
            "uploads": self.uploads,
            "duplicates": self.duplicates,
            "rejections": self.rejections,
        }


def check_info(state, info):
    if not isinstance(info, dict) or set(info) != set(FIELDS):
        raise Rejected(400, "RequestError", f"the narinfo must have exactly the fields {sorted(FIELDS)}, got {sorted(info) if isinstance(info, dict) else info!r}")
    for field, kind in FIELDS.items():
        if not isinstance(info[field], kind) or isinstance(info[field], bool):
            raise Rejected(400, "RequestError", f"{field} has the wrong type: {info[field]!r}")
    if info["cache"] != state.cache:
        raise Rejected(404, "NoSuchCache", f"The requested cache does not exist: {info['cache']}")
    base = info["store_path"].rsplit("/", 1)[-1]
    if not info["store_path"].startswith("/nix/store/") or not BASENAME.match(base):
        raise Rejected(400, "RequestError", f"store_path is not a store path: {info['store_path']!r}")
    if info["store_path_hash"] != base[:32]:
        raise Rejected(400, "RequestError", "store_path_hash is not the hash part of store_path")
    for ref in info["references"]:
        if not isinstance(ref, str) or not BASENAME.match(ref):
            raise Rejected(400, "RequestError", f"references must be basenames, got {ref!r}")
    if info["deriver"] is not None and not BASENAME.match(info["deriver"]):
        raise Rejected(400, "RequestError", f"deriver must be a basename, got {info['deriver']!r}")
    for sig in info["sigs"]:
        name, _, b64 = sig.partition(":") if isinstance(sig, str) else ("", "", "")
        try:
            ok = name and len(base64.b64decode(b64, validate=True)) == 64
        except binascii.Error:
            ok = False
        if not ok:
            raise Rejected(400, "RequestError", f"sigs must be name:base64 ed25519 signatures, got {sig!r}")
    if not NAR_HASH.match(info["nar_hash"]):
        raise Rejected(400, "RequestError", f"nar_hash must be sha256:<64 hex digits>, got {info['nar_hash']!r}")
    if info["nar_size"] <= 0:
        raise Rejected(400, "RequestError", "nar_size must be positive")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state = None

    def log_message(self, fmt, *args):
        sys.stderr.write("attic.py: " + (fmt % args) + "\n")

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self, method):
        path = urlsplit(self.path).path
        try:
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                raise Rejected(411, "RequestError", "send a Content-Length, not a chunked body")
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, body = self.route(method, path, raw)
        except Rejected as e:
            with self.state.lock:
                self.state.rejections.append(f"{method} {path}: {e.status} {e}")
            status, body = e.status, {"code": e.status, "error": e.error, "message": str(e)}
        self.reply(status, body)

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PUT(self):
        self.handle_any("PUT")

    def authenticate(self):
        m = re.match(r"^(?i:bearer) (.*)$", self.headers.get("Authorization") or "")
        if not m or m.group(1) != self.state.token:
            raise Rejected(401, "Unauthorized", "Unauthorized.")

    def route(self, method, path, raw):
        s = self.state
        if method == "GET" and path == "/_test/state":
            with s.lock:
                return 200, s.snapshot()
        if method == "POST" and path == "/_api/v1/get-missing-paths":
            self.authenticate()
            return self.missing(raw)
        if method == "PUT" and path == "/_api/v1/upload-path":
            self.authenticate()
            return self.upload(raw)
        raise Rejected(404, "NotFound", f"no such endpoint: {method} {path}")

    def missing(self, raw):
        try:
            req = json.loads(raw)
        except ValueError:
            raise Rejected(400, "RequestError", f"the body is not JSON: {raw[:100]!r}")
        if not isinstance(req, dict) or set(req) != {"cache", "store_path_hashes"}:
            raise Rejected(400, "RequestError", f"expected {{cache, store_path_hashes}}, got {req!r}")
        hashes = req["store_path_hashes"]
        if not isinstance(hashes, list) or not all(isinstance(h, str) and STORE_HASH.match(h) for h in hashes):
            raise Rejected(400, "RequestError", f"store_path_hashes must be store path hashes, got {hashes!r}")
        if req["cache"] != self.state.cache:
            raise Rejected(404, "NoSuchCache", f"The requested cache does not exist: {req['cache']}")
        with self.state.lock:
            self.state.queries.append(hashes)
            missing = sorted(set(h for h in hashes if h not in self.state.objects))
        return 200, {"missing_paths": missing}

    def upload(self, raw):
        preamble_size = self.headers.get("X-Attic-Nar-Info-Preamble-Size")
        if preamble_size is not None:
            try:
                size = int(preamble_size)
            except ValueError:
                raise Rejected(400, "RequestError", "X-Attic-Nar-Info-Preamble-Size must be a valid unsigned integer")
            if size > MAX_PREAMBLE or size > len(raw):
                raise Rejected(400, "RequestError", "Upload info doesn't match specified size")
            info_json, nar, via = raw[:size], raw[size:], "preamble"
        elif self.headers.get("X-Attic-Nar-Info") is not None:
            info_json, nar, via = self.headers["X-Attic-Nar-Info"].encode(), raw, "header"
        else:
            raise Rejected(400, "RequestError", "X-Attic-Nar-Info must be set")
        try:
            info = json.loads(info_json)
        except ValueError:
            raise Rejected(400, "RequestError", f"the narinfo is not JSON: {info_json[:100]!r}")
        check_info(self.state, info)
        if len(nar) != info["nar_size"]:
            raise Rejected(400, "RequestError", f"nar_size {info['nar_size']} but the body holds {len(nar)} bytes of NAR")
        if info["nar_hash"] != "sha256:" + hashlib.sha256(nar).hexdigest():
            raise Rejected(400, "RequestError", "Bad NAR Hash or Size")
        if not nar.startswith(b"\x0d\x00\x00\x00\x00\x00\x00\x00nix-archive-1"):
            raise Rejected(400, "RequestError", "the body does not hold a NAR")
        h = info["store_path_hash"]
        with open(os.path.join(self.state.dir, "nar", h + ".nar"), "wb") as f:
            f.write(nar)
        with open(os.path.join(self.state.dir, h + ".json"), "w") as f:
            json.dump(info, f)
        with self.state.lock:
            if h in self.state.objects:
                self.state.duplicates.append(h)
            self.state.objects[h] = dict(info, _via=via, _nar_file=f"nar/{h}.nar")
            self.state.uploads += 1
        return 200, {"kind": "Uploaded", "file_size": len(nar), "frac_deduplicated": 0.0}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    Handler.state = State(args)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
