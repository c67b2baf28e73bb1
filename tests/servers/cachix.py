#!/usr/bin/env python3
"""A stand-in Cachix for tests: the HTTP API v1 calls `cachix push` makes.

Speaks the shapes of cachix-api (Cachix/API.hs, Types/MultipartUpload.hs,
Types/NarInfoCreate.hs): POST /api/v1/cache/NAME/narinfo (missing hashes),
POST .../multipart-nar?compression=zst|xz, POST .../multipart-nar/ID?uploadId=
&partNumber= (answers a presigned URL on this server), PUT of the part there
(answers an ETag), POST .../multipart-nar/ID/complete?uploadId= and .../abort.

It checks what it receives and answers anything wrong with a 4xx and a
message: the Bearer token exactly, JSON field names and types, parts against
their Content-MD5, and every narInfoCreate field against the uploaded file
(file hash and size; after decompression, NAR hash and size; the signature
over the fingerprint with --public-key). It writes what it accepts as a Nix
binary cache under --dir (nix-cache-info, HASH.narinfo, nar/FILE), so a test
can read it back with Nix, and GET /_test/state shows what happened as JSON.

Usage: cachix.py --cache NAME --token TOKEN --dir DIR [--public-key NAME:B64]
Binds 127.0.0.1 on a free port and prints the port as its first line.
Python 3 standard library only.
"""

import argparse
import base64
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
STORE_HASH = re.compile(r"^[0-9a-df-np-sv-z]{32}$")
BASENAME = re.compile(r"^[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+$")
NIC_FIELDS = {
    "cStoreHash": str,
    "cStoreSuffix": str,
    "cNarHash": str,
    "cNarSize": int,
    "cFileHash": str,
    "cFileSize": int,
    "cReferences": list,
    "cDeriver": str,
    "cSig": (str, type(None)),
}


def nix32(digest):
    """Nix's base-32 of bytes."""
    n = (len(digest) * 8 - 1) // 5 + 1
    out = []
    for i in range(n - 1, -1, -1):
        bit = i * 5
        j, k = divmod(bit, 8)
        v = digest[j] >> k
        if j + 1 < len(digest):
            v |= digest[j + 1] << (8 - k)
        out.append(NIX32[v & 0x1F])
    return "".join(out)


# --- ed25519 verification (RFC 8032, section 5.1.7), small and slow ---
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _add(a, b):
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % P
    bb = (y1 + x1) * (y2 + x2) % P
    cc = t1 * 2 * D * t2 % P
    dd = z1 * 2 * z2 % P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(s, pt):
    acc = (0, 1, 1, 0)
    while s:
        if s & 1:
            acc = _add(acc, pt)
        pt = _add(pt, pt)
        s >>= 1
    return acc


def _decode(raw):
    y = int.from_bytes(raw, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        return None if sign else (0, y, 1, 0)
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


_BY = 4 * pow(5, P - 2, P) % P
BASE = _decode(_BY.to_bytes(32, "little"))


def ed25519_verify(public, message, signature):
    if len(public) != 32 or len(signature) != 64:
        return False
    a, r = _decode(public), _decode(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if a is None or r is None or s >= L:
        return False
    k = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % L
    lhs, rhs = _mul(s, BASE), _add(r, _mul(k, a))
    return (lhs[0] * rhs[2] - rhs[0] * lhs[2]) % P == 0 and (lhs[1] * rhs[2] - rhs[1] * lhs[2]) % P == 0


class Rejected(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class Cache:
    """Everything the server knows, behind one lock."""

    def __init__(self, args):
        self.name = args.cache
        self.token = args.token
        self.dir = args.dir
        self.key_name, self.public = None, None
        if args.public_key:
            self.key_name, b64 = args.public_key.split(":", 1)
            self.public = base64.b64decode(b64)
        self.lock = threading.Lock()
        self.queries = []  # each: the hashes asked about
        self.narinfos = {}  # store hash -> accepted narInfoCreate plus what we checked
        self.uploads = {}  # narId -> {uploadId, compression, parts: {n: (md5, bytes)}}
        self.completed = 0
        self.duplicates = []
        self.aborted = []
        self.rejections = []
        self.storage_auth_headers = 0
        os.makedirs(os.path.join(self.dir, "nar"), exist_ok=True)
        with open(os.path.join(self.dir, "nix-cache-info"), "w") as f:
            f.write("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n")

    def state(self):
        return {
            "queries": self.queries,
            "narinfos": self.narinfos,
            "completed": self.completed,
            "duplicates": self.duplicates,
            "aborted": self.aborted,
            "rejections": self.rejections,
            "storage_auth_headers": self.storage_auth_headers,
            "open_uploads": sorted(self.uploads),
        }


def decompress(compression, data):
    """The NAR inside `data`, or None when no decompressor is at hand."""
    if compression == "xz":
        return lzma.decompress(data)
    if shutil.which("zstd"):
        out = subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=False)
        if out.returncode != 0:
            raise Rejected(400, "the uploaded file is not zstd: " + out.stderr.decode(errors="replace"))
        return out.stdout
    return None


def check_nic(cache, nic, file_bytes, compression):
    """Checks a narInfoCreate against the uploaded file; returns what was verified."""
    if not isinstance(nic, dict) or set(nic) != set(NIC_FIELDS):
        raise Rejected(400, f"narInfoCreate must have exactly the fields {sorted(NIC_FIELDS)}, got {sorted(nic) if isinstance(nic, dict) else nic!r}")
    for field, kind in NIC_FIELDS.items():
        if not isinstance(nic[field], kind) or isinstance(nic[field], bool):
            raise Rejected(400, f"narInfoCreate.{field} has the wrong type: {nic[field]!r}")
    if not STORE_HASH.match(nic["cStoreHash"]):
        raise Rejected(400, f"cStoreHash is not a store hash: {nic['cStoreHash']!r}")
    for ref in nic["cReferences"]:
        if not isinstance(ref, str) or not BASENAME.match(ref):
            raise Rejected(400, f"cReferences must be store path basenames, got {ref!r}")
    if nic["cDeriver"] != "unknown-deriver" and not BASENAME.match(nic["cDeriver"]):
        raise Rejected(400, f"cDeriver must be a basename or unknown-deriver, got {nic['cDeriver']!r}")
    if nic["cFileSize"] != len(file_bytes):
        raise Rejected(400, f"cFileSize {nic['cFileSize']} but {len(file_bytes)} bytes were uploaded")
    if nic["cFileHash"] != hashlib.sha256(file_bytes).hexdigest():
        raise Rejected(400, "cFileHash is not the hex SHA-256 of the uploaded file")
    if not re.match(r"^sha256:[0-9a-df-np-sv-z]{52}$", nic["cNarHash"]):
        raise Rejected(400, f"cNarHash must be sha256:<nix base-32>, got {nic['cNarHash']!r}")
    if nic["cNarSize"] <= 0:
        raise Rejected(400, "cNarSize must be positive")
    nar = decompress(compression, file_bytes)
    if nar is not None:
        if len(nar) != nic["cNarSize"]:
            raise Rejected(400, f"cNarSize {nic['cNarSize']} but the NAR has {len(nar)} bytes")
        if nic["cNarHash"] != "sha256:" + nix32(hashlib.sha256(nar).digest()):
            raise Rejected(400, "cNarHash is not the hash of the uploaded NAR")
        if not nar.startswith(b"\x0d\x00\x00\x00\x00\x00\x00\x00nix-archive-1"):
            raise Rejected(400, "the uploaded file does not hold a NAR")
    sig_ok = None
    if cache.public is not None:
        if nic["cSig"] is None:
            raise Rejected(400, "cSig is missing but this cache is signed by the client")
        try:
            sig = base64.b64decode(nic["cSig"], validate=True)
        except ValueError:
            raise Rejected(400, f"cSig is not base64: {nic['cSig']!r}")
        refs = ",".join(sorted("/nix/store/" + r for r in nic["cReferences"]))
        fingerprint = f"1;/nix/store/{nic['cStoreHash']}-{nic['cStoreSuffix']};{nic['cNarHash']};{nic['cNarSize']};{refs}"
        if not ed25519_verify(cache.public, fingerprint.encode(), sig):
            raise Rejected(400, f"cSig does not verify over {fingerprint!r}")
        sig_ok = True
    return nar is not None, sig_ok


def write_binary_cache(cache, nic, file_bytes, compression):
    """Stores the file and a narinfo Nix can read, as Cachix would serve them."""
    file_name = "nar/%s.nar.%s" % (nix32(hashlib.sha256(file_bytes).digest()), "xz" if compression == "xz" else "zst")
    with open(os.path.join(cache.dir, file_name), "wb") as f:
        f.write(file_bytes)
    lines = [
        f"StorePath: /nix/store/{nic['cStoreHash']}-{nic['cStoreSuffix']}",
        f"URL: {file_name}",
        f"Compression: {'xz' if compression == 'xz' else 'zstd'}",
        f"FileHash: sha256:{nix32(hashlib.sha256(file_bytes).digest())}",
        f"FileSize: {len(file_bytes)}",
        f"NarHash: {nic['cNarHash']}",
        f"NarSize: {nic['cNarSize']}",
        "References: " + " ".join(nic["cReferences"]),
    ]
    if nic["cDeriver"] != "unknown-deriver":
        lines.append(f"Deriver: {nic['cDeriver']}")
    if nic["cSig"] is not None and cache.key_name:
        lines.append(f"Sig: {cache.key_name}:{nic['cSig']}")
    with open(os.path.join(cache.dir, nic["cStoreHash"] + ".narinfo"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return file_name


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    cache = None

    def log_message(self, fmt, *args):
        sys.stderr.write("cachix.py: " + (fmt % args) + "\n")

    def reply(self, status, body, headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def read_body(self):
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise Rejected(411, "send a Content-Length, not a chunked body")
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def body(self):
        return self.raw

    def json_body(self):
        raw = self.body()
        try:
            return json.loads(raw)
        except ValueError:
            raise Rejected(400, f"the body is not JSON: {raw[:100]!r}")

    def handle_any(self, method):
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            self.raw = self.read_body()
            status, body, headers = self.route(method, url.path, query)
        except Rejected as e:
            with self.cache.lock:
                self.cache.rejections.append(f"{method} {url.path}: {e.status} {e}")
            status, body, headers = e.status, {"error": str(e)}, ()
        self.reply(status, body, headers)

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PUT(self):
        self.handle_any("PUT")

    def route(self, method, path, query):
        c = self.cache
        if method == "GET" and path == "/_test/state":
            with c.lock:
                return 200, c.state(), ()
        if method == "PUT" and path.startswith("/_storage/"):
            return self.storage_put(path, query)
        prefix = f"/api/v1/cache/{c.name}/"
        if not path.startswith("/api/v1/cache/"):
            raise Rejected(404, f"no such endpoint: {path}")
        auth = self.headers.get("Authorization")
        if auth != f"Bearer {c.token}":
            raise Rejected(401, "the Bearer auth token is missing or wrong")
        if not path.startswith(prefix):
            raise Rejected(404, f"no such cache: {path}")
        rest = path[len(prefix):]
        if method == "POST" and rest == "narinfo":
            return self.narinfo_bulk()
        if method == "POST" and rest == "multipart-nar":
            return self.create(query)
        m = re.match(r"^multipart-nar/([^/]+)(/complete|/abort)?$", rest)
        if method == "POST" and m:
            upload = self.upload_for(m.group(1), query)
            if m.group(2) is None:
                return self.sign_part(m.group(1), upload, query)
            if m.group(2) == "/abort":
                with c.lock:
                    c.uploads.pop(m.group(1), None)
                    c.aborted.append(m.group(1))
                return 200, [], ()
            return self.complete(m.group(1), upload)
        raise Rejected(404, f"no such endpoint: {method} {path}")

    def narinfo_bulk(self):
        hashes = self.json_body()
        if not isinstance(hashes, list) or not all(isinstance(h, str) and STORE_HASH.match(h) for h in hashes):
            raise Rejected(400, f"expected a JSON list of store hashes, got {hashes!r}")
        with self.cache.lock:
            self.cache.queries.append(hashes)
            missing = [h for h in hashes if h not in self.cache.narinfos]
        return 200, missing, ()

    def create(self, query):
        compression = query.get("compression")
        if compression not in ("zst", "xz"):
            raise Rejected(400, f"Wrong compression method: {compression}")
        nar_id = str(uuid.uuid4())
        # An id with characters that must be percent-encoded in a query.
        upload_id = base64.b64encode(os.urandom(12)).decode() + "/+="
        with self.cache.lock:
            self.cache.uploads[nar_id] = {"uploadId": upload_id, "compression": compression, "parts": {}, "signed": {}}
        return 200, {"narId": nar_id, "uploadId": upload_id}, ()

    def upload_for(self, nar_id, query):
        with self.cache.lock:
            upload = self.cache.uploads.get(nar_id)
        if upload is None:
            raise Rejected(404, f"no open upload {nar_id}")
        if query.get("uploadId") != upload["uploadId"]:
            raise Rejected(400, f"uploadId {query.get('uploadId')!r} does not belong to {nar_id}")
        return upload

    def sign_part(self, nar_id, upload, query):
        body = self.json_body()
        if not isinstance(body, dict) or set(body) != {"contentMD5"} or not isinstance(body["contentMD5"], str):
            raise Rejected(400, f"expected {{\"contentMD5\": string}}, got {body!r}")
        try:
            number = int(query["partNumber"])
        except (KeyError, ValueError):
            raise Rejected(400, "partNumber is required")
        if number < 1:
            raise Rejected(400, "partNumber counts from 1")
        with self.cache.lock:
            upload["signed"][number] = body["contentMD5"]
        host, port = self.server.server_address[:2]
        url = f"http://{host}:{port}/_storage/{nar_id}/{number}?X-Amz-Signature={uuid.uuid4().hex}"
        return 200, {"uploadUrl": url}, ()

    def storage_put(self, path, query):
        data = self.body()
        m = re.match(r"^/_storage/([^/]+)/(\d+)$", path)
        if not m or "X-Amz-Signature" not in query:
            raise Rejected(403, "not a presigned URL")
        if self.headers.get("Authorization") is not None:
            with self.cache.lock:
                self.cache.storage_auth_headers += 1
            raise Rejected(400, "the storage host got an Authorization header (the auth token leaked)")
        nar_id, number = m.group(1), int(m.group(2))
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        with self.cache.lock:
            upload = self.cache.uploads.get(nar_id)
            signed = upload and upload["signed"].get(number)
        if signed is None:
            raise Rejected(403, f"part {number} of {nar_id} was not presigned")
        if self.headers.get("Content-MD5") != md5 or signed != md5:
            raise Rejected(400, f"Content-MD5 {self.headers.get('Content-MD5')!r} (signed {signed!r}) is not the part's MD5 {md5!r}")
        etag = '"%s"' % hashlib.md5(data).hexdigest()
        with self.cache.lock:
            upload["parts"][number] = (etag, data)
        return 200, b"", [("ETag", etag)]

    def complete(self, nar_id, upload):
        body = self.json_body()
        if not isinstance(body, dict) or set(body) != {"parts", "narInfoCreate"}:
            raise Rejected(400, f"expected parts and narInfoCreate, got {sorted(body) if isinstance(body, dict) else body!r}")
        parts = body["parts"]
        if not isinstance(parts, list) or not parts:
            raise Rejected(400, f"parts must be a non-empty list, got {parts!r}")
        numbers = []
        for part in parts:
            if not isinstance(part, dict) or set(part) != {"partNumber", "eTag"}:
                raise Rejected(400, f"each part is {{partNumber, eTag}}, got {part!r}")
            stored = upload["parts"].get(part["partNumber"])
            if stored is None or stored[0] != part["eTag"]:
                raise Rejected(400, f"part {part['partNumber']} has no upload with ETag {part['eTag']!r}")
            numbers.append(part["partNumber"])
        if numbers != list(range(1, len(upload["parts"]) + 1)):
            raise Rejected(400, f"parts {numbers} do not list every uploaded part in order")
        file_bytes = b"".join(upload["parts"][n][1] for n in numbers)
        nic = body["narInfoCreate"]
        nar_checked, sig_ok = check_nic(self.cache, nic, file_bytes, upload["compression"])
        with self.cache.lock:
            self.cache.uploads.pop(nar_id, None)
            if nic["cStoreHash"] in self.cache.narinfos:
                self.cache.duplicates.append(nic["cStoreHash"])
            file_name = write_binary_cache(self.cache, nic, file_bytes, upload["compression"])
            self.cache.narinfos[nic["cStoreHash"]] = dict(
                nic,
                _compression=upload["compression"],
                _file=file_name,
                _parts=len(numbers),
                _nar_checked=nar_checked,
                _sig_checked=sig_ok,
            )
            self.cache.completed += 1
        return 200, [], ()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--public-key")
    args = parser.parse_args()
    Handler.cache = Cache(args)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
