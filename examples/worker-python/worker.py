#!/usr/bin/env python3
"""A longrun worker node, standard library only (spec/PROTOCOL.md §25).

It serves HTTP on a port (0: any free one), prints `listening on PORT` on stdout, registers
its services and slots with a longrun server (`--server URL`, or `LONGRUN_SERVER` / `LONGRUN_URL`, `--token` or
`LONGRUN_TOKEN` when the server has tenants) and prints `registered NODE_ID`.

Services (each an object of the server once registered):
  - `<prefix>upper`  {"text": "..."} → the text in upper case; {"fail": true} → HTTP 500.
  - `<prefix>slow`   {"steps": N} → reports N progress events through the callback, then
                     {"steps": N}; {"hang": true} reports one event and then waits until the
                     server closes the connection (a timeout or a cancel).
Slots (`--slot PATTERN` or `--slot PATTERN@GROUP`, repeatable; default one ungrouped slot
`notes.*`), all at the path `/slot`: the signals the server delivers there (`POST /_signals/
{topic}` on the server) are recorded and answered 200 `{}`.
Other paths:
  - the health path (`--health PATH`, default `/health`, also registered as `health_check`)
    answers 200 while the worker is healthy; `POST /_sick` and `POST /_well` switch that.
  - `GET /_seen` lists the run ids (`sender`) this worker was handed, in order.
  - `GET /_closed/<sender>` waits (at most 30 s) until the server closed the connection of
    that run, then answers 200 (504 if it did not).
  - `GET /_signals` lists the signals delivered to the slots, `{"signals": [{"topic", "sender",
    "data"}, ...]}` in order; `GET /_signals?count=N` first waits (at most 30 s) until at
    least N are recorded (504 with the list if they are not).
  - `GET /_pings` (`?count=N` likewise) lists the `Longrun-Replica` header of each health
    ping, `{"pings": [...]}` (null when the server sent none): which replicas check health.
"""

import argparse
import json
import os
import select
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE = {"seen": [], "closed": set(), "healthy": True, "signals": [], "pings": []}
# The health pings remembered for `GET /_pings` (the latest ones).
MAX_PINGS = 1000
LOCK = threading.Condition()


def post_json(url, value, token=None):
    req = urllib.request.Request(
        url,
        data=json.dumps(value).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=30) as res:
        return res.status, json.loads(res.read() or b"null")


def peer_closed(sock):
    """True once the other end closed the connection (readable with nothing to read)."""
    readable, _, _ = select.select([sock], [], [], 0.05)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class Server(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True


class Worker(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    health_path = "/health"
    prefix = ""

    def log_message(self, *args):
        pass

    def reply(self, status, value):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path == self.health_path:
            with LOCK:
                healthy = STATE["healthy"]
                STATE["pings"].append(self.headers.get("Longrun-Replica"))
                del STATE["pings"][:-MAX_PINGS]
                LOCK.notify_all()
            self.reply(200 if healthy else 503, {"status": "ok" if healthy else "sick"})
        elif self.path == "/_seen":
            with LOCK:
                self.reply(200, {"seen": list(STATE["seen"])})
        elif self.path.startswith("/_closed/"):
            sender = self.path[len("/_closed/"):]
            with LOCK:
                closed = LOCK.wait_for(lambda: sender in STATE["closed"], timeout=30)
            self.reply(200 if closed else 504, {"closed": closed})
        elif path in ("/_signals", "/_pings"):
            key = path[2:]
            try:
                count = int(urllib.parse.parse_qs(query).get("count", ["0"])[0])
            except ValueError:
                return self.reply(400, {"message": "count is not a number"})
            with LOCK:
                enough = LOCK.wait_for(lambda: len(STATE[key]) >= count, timeout=30)
                self.reply(200 if enough else 504, {key: list(STATE[key])})
        else:
            self.reply(404, {"message": "no such path"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path in ("/_sick", "/_well"):
            with LOCK:
                STATE["healthy"] = self.path == "/_well"
            return self.reply(200, {"healthy": STATE["healthy"]})
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return self.reply(400, {"message": "the body is not JSON"})
        if not isinstance(body, dict):
            return self.reply(400, {"message": "the body is not a JSON object"})
        sender = body.get("sender")
        if self.path == "/slot":
            with LOCK:
                STATE["signals"].append(
                    {"topic": body.get("topic"), "sender": sender, "data": body.get("data")}
                )
                LOCK.notify_all()
            return self.reply(200, {})
        data = body.get("data") or {}
        with LOCK:
            STATE["seen"].append(sender)
        if self.path == "/upper":
            if data.get("fail"):
                return self.reply(500, {"message": "asked to fail", "input": data})
            return self.reply(200, {"text": str(data.get("text", "")).upper()})
        if self.path == "/slow":
            callback = self.headers.get("Longrun-Callback")
            steps = int(data.get("steps", 3))
            for i in range(1, steps + 1):
                if callback:
                    post_json(callback, {"progress": i / max(steps, 1), "message": f"step {i}"})
            if data.get("hang"):
                if callback:
                    post_json(callback, {"message": "hanging"})
                while not peer_closed(self.connection):
                    pass
                with LOCK:
                    STATE["closed"].add(sender)
                    LOCK.notify_all()
                return
            return self.reply(200, {"steps": steps})
        self.reply(404, {"message": "no such service path"})


def slot(spec, timeout):
    """The registration of `--slot PATTERN` or `--slot PATTERN@GROUP`."""
    topic, at, group = spec.partition("@")
    value = {"topic": topic, "path": "/slot", "timeout": timeout}
    if at:
        value["group"] = group
    return value


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--server",
        default=os.environ.get("LONGRUN_SERVER")
        or os.environ.get("LONGRUN_URL", "http://127.0.0.1:8080"),
    )
    ap.add_argument("--token", default=os.environ.get("LONGRUN_TOKEN"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("WORKER_PORT", "0")))
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on and register")
    ap.add_argument("--prefix", default="", help="prefix of the service topics")
    ap.add_argument("--group", default="workers", help="exclusion group of the services")
    ap.add_argument("--timeout", type=float, default=60, help="service timeout, seconds")
    ap.add_argument("--concurrency", type=int, default=None)
    ap.add_argument(
        "--slot",
        action="append",
        metavar="PATTERN[@GROUP]",
        help="a slot topic pattern (* and ?), with its exclusion group; repeatable "
        "(default: notes.*)",
    )
    ap.add_argument("--health", default="/health", help="the health path, answered and registered")
    ap.add_argument("--no-register", action="store_true")
    args = ap.parse_args()

    Worker.prefix = args.prefix
    Worker.health_path = args.health
    httpd = Server((args.host, args.port), Worker)
    port = httpd.server_address[1]
    print(f"listening on {port}", flush=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    if not args.no_register:
        registration = {
            "host": args.host,
            "port": port,
            "health_check": Worker.health_path,
            "services": [
                {"topic": args.prefix + "upper", "group": args.group, "path": "/upper",
                 "timeout": args.timeout},
                {"topic": args.prefix + "slow", "group": args.group, "path": "/slow",
                 "timeout": args.timeout},
            ],
            "slots": [slot(spec, args.timeout) for spec in args.slot or ["notes.*"]],
        }
        if args.concurrency:
            registration["concurrency"] = args.concurrency
        try:
            _, reply = post_json(args.server.rstrip("/") + "/_nodes", registration, args.token)
        except urllib.error.HTTPError as e:
            print(f"registration refused: {e.code} {e.read().decode()}", file=sys.stderr, flush=True)
            sys.exit(1)
        print(f"registered {reply['id']}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
