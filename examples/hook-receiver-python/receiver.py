#!/usr/bin/env python3
"""A receiver of longrun response hooks (spec §26), with the standard library only.

It verifies every delivery's signature as Standard Webhooks says (HMAC-SHA256 over
"{webhook-id}.{webhook-timestamp}.{body}" with the key of the secret "whsec_<base64>"),
refuses a timestamp more than 5 minutes from its clock, drops a delivery it has already seen
(the same webhook-id: deliveries are at least once), and prints one JSON line per delivery.

    python3 receiver.py --secret whsec_... [--host 127.0.0.1] [--port 9000] [--unix PATH]

With --unix it listens on a unix socket instead, speaking acomm's framing: a 4-byte big-endian
length, then the payload; it answers with a framed ack {"ok": true}. Unix deliveries carry no
signature (the socket's permissions say who may connect).
"""

import argparse
import base64
import hashlib
import hmac
import http.server
import json
import os
import socketserver
import struct
import sys
import threading
import time

TOLERANCE = 5 * 60


class VerifyError(Exception):
    """Which check of a delivery failed."""


def secret_key(secret):
    encoded = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    key = base64.b64decode(encoded, validate=True)
    if not key:
        raise ValueError("a hook secret must not be empty")
    return key


def verify(key, headers, body, tolerance=TOLERANCE, now=None):
    """Raise VerifyError unless `body` was signed with `key` within `tolerance` seconds.

    `headers` maps lowercase header names to values.
    """
    try:
        msg_id = headers["webhook-id"]
        timestamp = headers["webhook-timestamp"]
        signature = headers["webhook-signature"]
    except KeyError as missing:
        raise VerifyError(f"the delivery has no {missing.args[0]} header") from None
    try:
        seconds = int(timestamp.strip())
    except ValueError:
        raise VerifyError("webhook-timestamp is not a Unix time in seconds") from None
    now = time.time() if now is None else now
    if abs(now - seconds) > tolerance:
        raise VerifyError("the timestamp is too far from now (a replay, or a wrong clock)")
    signed = f"{msg_id}.{seconds}.".encode() + body
    expected = hmac.new(key, signed, hashlib.sha256).digest()
    for entry in signature.split(" "):
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except ValueError:
            continue
        if hmac.compare_digest(given, expected):
            return
    raise VerifyError("no signature matches (another secret, or the body was changed)")


class Seen:
    """The webhook-ids already delivered (bounded: the newest 10000)."""

    def __init__(self, size=10000):
        self.size, self.ids, self.order, self.lock = size, set(), [], threading.Lock()

    def first_time(self, msg_id):
        with self.lock:
            if msg_id in self.ids:
                return False
            self.ids.add(msg_id)
            self.order.append(msg_id)
            if len(self.order) > self.size:
                self.ids.discard(self.order.pop(0))
            return True


def report(kind, payload, **extra):
    data = payload.get("data", {})
    line = {
        "delivery": kind,
        "type": payload.get("type"),
        "run": data.get("id"),
        "object": data.get("object"),
        "state": data.get("state"),
        "event": (data.get("event") or {}).get("id"),
        **extra,
    }
    print(json.dumps(line), flush=True)


def http_handler(key, seen):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                verify(key, headers, body)
            except VerifyError as e:
                print(json.dumps({"refused": str(e)}), flush=True)
                self.send_response(401)
                self.end_headers()
                return
            msg_id = headers["webhook-id"]
            if seen.first_time(msg_id):
                report("verified", json.loads(body), id=msg_id)
            else:
                report("duplicate", json.loads(body), id=msg_id)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    return Handler


class UnixHandler(socketserver.StreamRequestHandler):
    def handle(self):
        (length,) = struct.unpack(">I", self.rfile.read(4))
        payload = json.loads(self.rfile.read(length))
        report("unix", payload)
        ack = json.dumps({"ok": True}).encode()
        self.wfile.write(struct.pack(">I", len(ack)) + ack)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secret", default=os.environ.get("LONGRUN_HOOK_SECRET"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--unix", help="listen on this unix socket instead")
    args = parser.parse_args()
    if args.unix:
        if os.path.exists(args.unix):
            os.unlink(args.unix)
        server = socketserver.ThreadingUnixStreamServer(args.unix, UnixHandler)
        print(json.dumps({"listening": f"unix://{args.unix}"}), flush=True)
    else:
        if not args.secret:
            sys.exit("give the server's hook secret: --secret whsec_... (or LONGRUN_HOOK_SECRET)")
        key = secret_key(args.secret)
        server = http.server.ThreadingHTTPServer(
            (args.host, args.port), http_handler(key, Seen())
        )
        host, port = server.server_address[:2]
        print(json.dumps({"listening": f"http://{host}:{port}/hook"}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
