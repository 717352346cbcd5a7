"""`cargo xtask bench python`: drain the 100,002 events of one `count` run (n=100000) with this
SDK and with httpx + httpx-sse (the usual pure-Python way), sync and asyncio, from one server
in one run; best of 5 each (rounds interleaved), with the process's RSS growth while draining (flat = no buffering).
Twice: reading every event's value (json.loads for httpx-sse), and taking the events only
(id and state; the SDK turns a value into Python objects only when it is read).

usage: python drain.py PATH/TO/longrun"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Awaitable, Callable, Dict, List, Tuple

import httpx
import httpx_sse

import longrun

N = 100_000
ROUNDS = 5
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Meter:
    """Counts events, samples RSS every 10,000 and keeps the growth after the first sample."""

    def __init__(self) -> None:
        self.n = 0
        self.base = 0
        self.peak = 0

    def event(self) -> None:
        self.n += 1
        if self.n % 10_000 == 0:
            now = rss()
            if self.n == 10_000:
                self.base = now
            self.peak = max(self.peak, now - self.base)


VALUES = True


def sdk_sync(url: str, run_url: str, m: Meter) -> None:
    with longrun.Client(url) as c:
        for ev in c.follow(longrun.Run.from_url(run_url)):
            if VALUES:
                ev.value
            m.event()


def httpx_sync(url: str, run_url: str, m: Meter) -> None:
    with httpx.Client(timeout=60) as c:
        with httpx_sse.connect_sse(c, "GET", run_url) as source:
            for sse in source.iter_sse():
                if not sse.data:  # the `retry:` block
                    continue
                if VALUES:
                    json.loads(sse.data)
                int(sse.id)
                m.event()
                if sse.event in ("success", "error", "canceled"):
                    break


async def sdk_async(url: str, run_url: str, m: Meter) -> None:
    async with longrun.AsyncClient(url) as c:
        async for ev in c.follow(longrun.Run.from_url(run_url)):
            if VALUES:
                ev.value
            m.event()


async def httpx_async(url: str, run_url: str, m: Meter) -> None:
    async with httpx.AsyncClient(timeout=60) as c:
        async with httpx_sse.aconnect_sse(c, "GET", run_url) as source:
            async for sse in source.aiter_sse():
                if not sse.data:  # the `retry:` block
                    continue
                if VALUES:
                    json.loads(sse.data)
                int(sse.id)
                m.event()
                if sse.event in ("success", "error", "canceled"):
                    break


def measure_round(drain: Callable[[str, str, Meter], Any], url: str, run_url: str) -> Tuple[float, float]:
    m = Meter()
    start = time.perf_counter()
    out = drain(url, run_url, m)
    if asyncio.iscoroutine(out):
        asyncio.run(out)
    elapsed = time.perf_counter() - start
    assert m.n == N + 2, f"{drain.__name__} drained {m.n} events"
    return elapsed, m.peak / 1e6


def main() -> None:
    server = subprocess.Popen([sys.argv[1], "serve", "--store", "memory", "--listen", "127.0.0.1:0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        url = ""
        for line in server.stdout:
            if line.startswith("longrun listening on "):
                url = line.split()[-1]
                break
        threading.Thread(target=server.stdout.read, daemon=True).start()
        with longrun.Client(url) as c:
            run = c.submit("count", {"n": N})
            c.wait(run)  # every client drains the same finished log: client cost only
        global VALUES
        print(f"python: drain {N + 2:,} events of one count run (n={N}) over SSE, best of {ROUNDS}")
        for VALUES in (True, False):
            print("  reading every value:" if VALUES else "  events only (id, state):")
            contenders = [
                ("longrun sync", sdk_sync),
                ("httpx-sse sync", httpx_sync),
                ("longrun asyncio", sdk_async),
                ("httpx-sse asyncio", httpx_async),
            ]
            # Rounds interleave the contenders, so a noisy stretch of a shared machine falls
            # on all of them rather than on one.
            results: Dict[str, Tuple[float, float]] = {name: (float("inf"), 0.0) for name, _ in contenders}
            for _ in range(ROUNDS):
                for name, drain in contenders:
                    secs, growth = measure_round(drain, url, run.url)
                    best, most = results[name]
                    results[name] = (min(best, secs), max(most, growth))
            for name, (secs, growth) in results.items():
                print(f"    {name:<18} {secs:7.3f} s  {(N + 2) / secs:>10,.0f} events/s"
                      f"  RSS +{growth:.1f} MB while draining")
            for flavour in ("sync", "asyncio"):
                ours, peer = results[f"longrun {flavour}"][0], results[f"httpx-sse {flavour}"][0]
                print(f"    {flavour}: longrun is {peer / ours:.1f}x httpx-sse (goal >= 5x)")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
