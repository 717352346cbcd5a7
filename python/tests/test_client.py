"""Behaviour of the Python SDK beyond the conformance scenarios: resume through a proxy that
cuts connections, cancel, wait timeouts, the exception tree, the GIL, Ctrl-C, asyncio task
cancellation, progress, and the typed API."""

from __future__ import annotations

import asyncio
import faulthandler
import inspect
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest

import longrun
from longrun import _native

from conftest import OTHER_TOKEN, READ_TOKEN, TOKEN, Server

# A test that hangs (a GIL that is never released, a Ctrl-C that is never seen) must fail,
# not block the suite.
faulthandler.dump_traceback_later(300, exit=True)

SLEEP_FOREVER = {"ms": 3600000}


class CuttingProxy:
    """A TCP proxy that closes every other connection after `cut_after` bytes from the
    server, mid-event or mid-body; it holds each chunk from the server for `delay` seconds
    (a slow or buffering proxy) and records what clients send."""

    def __init__(self, upstream: str, cut_after: int, delay: float = 0.0) -> None:
        host, port = upstream.rsplit("//", 1)[1].rsplit(":", 1)
        self.upstream = (host, int(port))
        self.cut_after = cut_after
        self.delay = delay
        self.connections = 0
        self.cuts = 0
        #: What clients sent, chunk by chunk.
        self.sent: List[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            cut = self.connections % 2 == 1
            server = socket.create_connection(self.upstream)
            threading.Thread(
                target=self._pipe, args=(client, server, None, self.sent, 0.0), daemon=True
            ).start()
            threading.Thread(
                target=self._pipe,
                args=(server, client, self.cut_after if cut else None, None, self.delay),
                daemon=True,
            ).start()

    def _pipe(
        self, src: socket.socket, dst: socket.socket, budget: Any, record: Any, delay: float
    ) -> None:
        try:
            while True:
                data = src.recv(65536 if budget is None else min(65536, budget))
                if not data:
                    break
                if record is not None:
                    record.append(data)
                if delay:
                    time.sleep(delay)
                dst.sendall(data)
                if budget is not None:
                    budget -= len(data)
                    if budget <= 0:
                        self.cuts += 1
                        break
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def client(url: str) -> Iterator[longrun.Client]:
    with longrun.Client(url) as c:
        yield c


# --- resume -------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["sse", "poll"])
def test_follow_resumes_exactly_once_through_a_connection_cutting_proxy(
    fast_server: Server, transport: str
) -> None:
    proxy = CuttingProxy(fast_server.url, cut_after=1500)
    n = 300
    try:
        with longrun.Client(proxy.url, reconnect_delay=0.02, reconnect_max_delay=0.05) as c:
            run = c.submit("count", {"n": n})
            events = list(c.follow(run, transport=transport))
            async def follow_async() -> List[longrun.Event]:
                async with longrun.AsyncClient(proxy.url, reconnect_delay=0.02) as ac:
                    return [e async for e in ac.follow(run, transport=transport)]
            async_events = asyncio.run(follow_async())
    finally:
        proxy.close()
    assert proxy.cuts >= 2, "the proxy never cut a connection"
    for got in (events, async_events):
        assert [e.id for e in got] == list(range(n + 2))
        assert [e.state for e in got] == ["queued"] + ["running"] * n + ["success"]
        assert [e.value["i"] for e in got[1:-1]] == list(range(1, n + 1))
        assert got[-1].value == {"n": n}


def test_follow_from_a_run_url_resumes_after_the_cursor(client: longrun.Client) -> None:
    run = client.submit("count", {"n": 5})
    first = [e for e in client.follow(run) if e.id <= 2]
    again = longrun.Run.from_url(run.url)
    assert again == run and hash(again) == hash(run)
    rest = list(client.follow(again, since=first[-1].id, transport="poll"))
    assert [e.id for e in first + rest] == list(range(7))
    assert list(client.follow(again, since=6)) == []


# --- cancel and wait ----------------------------------------------------------------------


def test_cancel_ends_the_run_canceled_and_is_typed_once_ended(client: longrun.Client) -> None:
    run = client.submit("sleep", SLEEP_FOREVER)
    assert client.cancel(run) == longrun.CancelOutcome("accepted", None)
    with pytest.raises(longrun.Canceled) as info:
        client.wait(run)
    assert info.value.value == {"reason": "client"}
    assert isinstance(info.value, longrun.RunCanceled)
    assert client.status(run) == longrun.RunStatus("canceled", 1)
    done = client.submit("echo", {"a": 1})
    assert client.wait(done) == {"a": 1}
    outcome = client.cancel(done)
    assert (outcome.outcome, outcome.state, outcome.accepted) == ("ended", "success", False)


def test_wait_timeout_raises_and_the_run_goes_on(client: longrun.Client) -> None:
    run = client.submit("sleep", SLEEP_FOREVER)
    with pytest.raises(longrun.Timeout) as info:
        client.wait(run, timeout=0.2)
    assert isinstance(info.value, TimeoutError)
    assert client.status(run).state == "queued"
    client.cancel(run)


def test_async_wait_timeout_and_cancel(url: str) -> None:
    async def main() -> None:
        async with longrun.AsyncClient(url) as c:
            run = await c.submit("sleep", SLEEP_FOREVER)
            with pytest.raises(longrun.Timeout):
                await c.wait(run, timeout=0.2)
            assert await c.exists(run)
            assert (await c.cancel(run)).accepted
            with pytest.raises(longrun.Canceled):
                await c.wait(run)

    asyncio.run(main())


# --- errors -------------------------------------------------------------------------------


def test_every_error_kind_of_the_core_has_one_exception_under_longrun_error() -> None:
    kinds = _native.error_kinds()
    assert sorted(longrun.KINDS) == sorted(kinds)
    for kind, cls in longrun.KINDS.items():
        assert issubclass(cls, longrun.Error) and cls is not longrun.Error
        assert cls.kind == kind and cls.__name__ == kind
        assert getattr(longrun, kind) is cls
    assert issubclass(longrun.Timeout, TimeoutError)
    assert issubclass(longrun.InvalidArgument, ValueError)
    assert issubclass(longrun.Transport, ConnectionError)


def test_errors_carry_status_problem_and_value(client: longrun.Client, url: str) -> None:
    with pytest.raises(longrun.NotFound) as nf:
        client.submit("nope", {})
    assert nf.value.status == 404
    assert nf.value.problem is not None
    assert nf.value.problem["type"] == "urn:longrun:problem:unknown-object"
    assert nf.value.value is None
    failed = client.submit("fail", {"message": "boom"})
    with pytest.raises(longrun.RunFailed) as rf:
        client.wait(failed)
    assert rf.value.value == {"message": "boom"} and rf.value.status is None
    assert "boom" in str(rf.value)
    with pytest.raises(longrun.InvalidArgument):
        client.submit("echo", {"x": object()})
    with pytest.raises(longrun.InvalidArgument):
        client.submit("echo", {"x": float("nan")})
    with pytest.raises(longrun.InvalidArgument):
        longrun.Run.from_url("http://h/count/not-an-id")
    with pytest.raises(longrun.InvalidArgument):
        longrun.Client("not a url")
    with pytest.raises(longrun.InvalidArgument):
        list(client.follow(failed, transport="carrier-pigeon"))
    other = longrun.Run("http://elsewhere.invalid:1", "echo", failed.id)
    with pytest.raises(longrun.InvalidArgument):
        client.exists(other)
    # A closed port: the connection fails, after no retries.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = "http://127.0.0.1:%d" % s.getsockname()[1]
    with longrun.Client(dead, reconnect_attempts=0) as d:
        with pytest.raises(longrun.Transport):
            d.submit("echo", {})


# --- client options and cursors -----------------------------------------------------------


@pytest.mark.parametrize("options", [
    {"bogus": 1},
    {"idle_timeout": -1},
    {"sse_fallback_after": "1s"},
    {"timeout": 1, "timeout_ms": 1000},
    {"reconnect_attempts": -1},
    {"headers": 3},
])
def test_a_bad_client_option_is_invalid_argument(url: str, options: Any) -> None:
    for cls in (longrun.Client, longrun.AsyncClient):
        with pytest.raises(longrun.InvalidArgument):
            cls(url, **options)


def test_client_options_go_to_the_core_as_they_are(url: str) -> None:
    # Spellings of the core's ClientOptions that no Python code lists.
    with longrun.Client(url, timeout_ms=10_000, reconnect={"max_attempts": 1}, headers=[("x-a", "1")]) as c:
        assert c.wait(c.submit("echo", {"a": 1})) == {"a": 1}


def test_idle_timeout_drops_a_silent_follow(url: str) -> None:
    # A sleeping run says nothing after `queued` (keep-alives come every 15 s): a follow with
    # idle_timeout 0.2 s and no reconnects fails with Transport instead of waiting.
    with longrun.Client(url, idle_timeout=0.2, reconnect_attempts=0) as c:
        run = c.submit("sleep", SLEEP_FOREVER)
        start = time.monotonic()
        with pytest.raises(longrun.Transport):
            for _ in c.follow(run, transport="sse"):
                pass
        assert time.monotonic() - start < 10
        c.cancel(run)


def test_sse_fallback_after_switches_a_follow_to_long_polling(url: str) -> None:
    # Each answer comes 0.3 s late: within the default fallback time, past one of 0.05 s.
    proxy = CuttingProxy(url, cut_after=1 << 40, delay=0.3)
    try:
        for fallback, polled in ((None, False), (0.05, True)):
            proxy.sent.clear()
            with longrun.Client(proxy.url, sse_fallback_after=fallback) as c:
                run = c.submit("count", {"n": 2})
                assert [e.id for e in c.follow(run)] == [0, 1, 2, 3]
            assert any(b"wait=" in chunk for chunk in proxy.sent) == polled, fallback
    finally:
        proxy.close()


def test_a_cursor_that_is_not_a_non_negative_int_is_invalid_argument(
    client: longrun.Client, url: str
) -> None:
    run = client.submit("count", {"n": 1})
    client.wait(run)
    for since in (-1, -(2**70), 2**64, 2**200):
        with pytest.raises(longrun.InvalidArgument):
            client.follow(run, since=since)
    assert list(client.follow(run, since=2**64 - 1)) == []

    async def main() -> None:
        async with longrun.AsyncClient(url) as ac:
            with pytest.raises(longrun.InvalidArgument):
                ac.follow(run, since=-1)
            assert [e.id async for e in ac.follow(run, since=1)] == [2]

    asyncio.run(main())


def test_values_round_trip_through_json(client: longrun.Client) -> None:
    args = {"s": "héllo ✓", "i": -(2**53 - 1), "big": 2**63, "f": 1.5, "b": True, "n": None,
            "l": [1, "2", [3.0]], "t": (1, 2), "d": {"x": {"y": False}}}
    value = client.wait(client.submit("echo", args))
    assert value == {**args, "t": [1, 2]}
    assert value["b"] is True and isinstance(value["i"], int) and isinstance(value["f"], float)


def test_event_values_are_the_json_values_sent_in_order_of_keys(client: longrun.Client) -> None:
    """Event values are built straight from JSON text, keeping short keys between values:
    keys that share a length and end bytes, escaped and non-ASCII keys, keys longer than
    those kept, and key order must all come out as json.loads reads the same text."""
    import json

    long_key = "k" * 40 + "é"
    values: List[Any] = [
        {"ab": 1, "xb": 2, "a\tb": 3},  # same length and last byte; a key sent escaped
        {"zeta": 1, "alpha": 2, "mu": {"zeta": [True, None]}},
        {"ключ": "значение", "emoji ✓": "✓", long_key: long_key},
        {"ab": "again", "xb": "again"},
        {"": 0, "\"quoted\"": "\\"},
        [{"progress": 0.5}, {"message": "m"}],
        "text",
        12345678901234567890,
        -0.0,
    ]
    run = client.submit("emit", {"events": values})
    got = [e.value for e in client.follow(run) if e.state == "running"]
    assert got == values
    for value, want in zip(got, values):
        # Same keys in the same order as the JSON text (the server writes sorted keys).
        assert json.dumps(value) == json.dumps(json.loads(json.dumps(want, sort_keys=True)))


# --- GIL, Ctrl-C, asyncio cancellation ----------------------------------------------------


def test_other_threads_run_while_follow_and_wait_block(client: longrun.Client, url: str) -> None:
    """The follow below only ends because another Python thread counts and then cancels the
    run: with the GIL held while Rust waits, that thread would never run."""
    for verb in ("follow", "wait"):
        run = client.submit("sleep", SLEEP_FOREVER)
        started = threading.Event()
        counted = [0]

        def count_then_cancel() -> None:
            started.wait()
            while counted[0] < 200_000:
                counted[0] += 1
            with longrun.Client(url) as other:
                other.cancel(run)

        thread = threading.Thread(target=count_then_cancel)
        thread.start()
        if verb == "follow":
            events = client.follow(run)
            assert next(events).state == "queued"
            started.set()
            assert [e.state for e in events] == ["canceled"]
        else:
            started.set()
            with pytest.raises(longrun.Canceled):
                client.wait(run)
        thread.join()
        assert counted[0] == 200_000


def blocked_in(function: Any, marker: str) -> None:
    """Return once the main thread is on the line of ``function`` that holds ``marker``, the
    line that makes its blocking native call: a SIGINT now is raised inside that call or just
    before it, within the ``try`` that handles KeyboardInterrupt either way. (The scripts
    below run it too, from its source.)"""
    lines, first = inspect.getsourcelines(function)
    line = first + next(i for i, text in enumerate(lines) if marker in text)
    code, main = function.__code__, threading.main_thread().ident
    while True:
        frame = sys._current_frames().get(main)  # type: ignore[arg-type]
        if frame is not None and frame.f_code is code and frame.f_lineno == line:
            return
        time.sleep(0.001)  # polling what the main thread does, not waiting for time to pass


def _interrupt_when_blocked_in(function: Any, marker: str) -> None:
    def fire() -> None:
        blocked_in(function, marker)
        signal.raise_signal(signal.SIGINT)

    threading.Thread(target=fire, daemon=True).start()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT from a thread")
@pytest.mark.parametrize("cancel_on_interrupt", [False, True])
def test_ctrl_c_interrupts_a_blocking_follow(client: longrun.Client, cancel_on_interrupt: bool) -> None:
    run = client.submit("sleep", SLEEP_FOREVER)
    events = client.follow(run, cancel_on_interrupt=cancel_on_interrupt)
    assert next(events).state == "queued"
    _interrupt_when_blocked_in(longrun.Client._iterate, "events.next_batch(")
    with pytest.raises(KeyboardInterrupt):
        next(events)
    if not cancel_on_interrupt:
        assert client.status(run).state == "queued"  # stopping a follow is not a cancel
        client.cancel(run)
    with pytest.raises(longrun.Canceled):
        client.wait(run)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT from a thread")
@pytest.mark.parametrize("cancel_on_interrupt", [False, True])
def test_ctrl_c_interrupts_a_blocking_wait(client: longrun.Client, cancel_on_interrupt: bool) -> None:
    run = client.submit("sleep", SLEEP_FOREVER)
    _interrupt_when_blocked_in(longrun.Client.wait, "self._n.wait(")
    with pytest.raises(KeyboardInterrupt):
        client.wait(run, cancel_on_interrupt=cancel_on_interrupt)
    if not cancel_on_interrupt:
        assert client.status(run).state == "queued"
        client.cancel(run)
    with pytest.raises(longrun.Canceled):
        client.wait(run)


def test_ctrl_c_in_a_script_exits_with_keyboard_interrupt(url: str, tmp_path: Path) -> None:
    """The same through a real process and a real SIGINT, as a user at a terminal sends it."""
    script = "import inspect, longrun, sys, threading, time\nfrom typing import Any\n" + (
        inspect.getsource(blocked_in) + "\n"
        "c = longrun.Client(sys.argv[1])\n"
        "run = c.submit('sleep', {'ms': 3600000})\n"
        "events = c.follow(run, cancel_on_interrupt=True)\n"
        "next(events)\n"
        "def ready():\n"
        "    blocked_in(longrun.Client._iterate, 'events.next_batch(')\n"
        "    print(run.url, flush=True)\n"
        "threading.Thread(target=ready, daemon=True).start()\n"
        "for e in events: pass\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert proc.stdout is not None
    run_url = proc.stdout.readline().strip()  # printed once the follow is blocked
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err
    with longrun.Client(url) as c:
        with pytest.raises(longrun.Canceled):
            c.wait(longrun.Run.from_url(run_url), timeout=30)


EXIT_WITH_ANSWERS_IN_FLIGHT = """
import asyncio, longrun, sys

async def main() -> None:
    global in_flight
    c = longrun.AsyncClient(sys.argv[1])
    run = await c.submit("echo", {})
    await c.wait(run)
    # Bare futures nobody awaits: asyncio.run leaves them, and they are answered while the
    # interpreter exits.
    in_flight = [c._n.status(run._run) for _ in range(200)]
    await asyncio.sleep(0)

asyncio.run(main())
"""


def test_exiting_with_asyncio_answers_in_flight_is_clean(url: str, tmp_path: Path) -> None:
    """Answers still on their way when a script ends must not take the GIL while the
    interpreter finalizes: with pyo3-async-runtimes that aborted about one exit in five
    (`Fatal Python error: PyGILState_Release`, or a segfault). The runtime stops at exit."""
    for _ in range(10):
        proc = subprocess.run([sys.executable, "-c", EXIT_WITH_ANSWERS_IN_FLIGHT, url],
                              capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "Fatal Python error" not in proc.stderr, proc.stderr


def test_cancelling_the_asyncio_task_stops_the_follow(url: str) -> None:
    async def main() -> None:
        async with longrun.AsyncClient(url) as c:
            run = await c.submit("sleep", SLEEP_FOREVER)
            got_first = asyncio.Event()

            async def follow() -> None:
                async for event in c.follow(run):
                    got_first.set()

            async def wait() -> None:
                await c.wait(run)

            for body in (follow, wait):
                task = asyncio.ensure_future(body())
                if body is follow:
                    await got_first.wait()
                else:
                    await asyncio.sleep(0)  # one turn: the task is now awaiting the native wait
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(task, 10)
            assert (await c.status(run)).state == "queued"  # stopping a follow is not a cancel
            await c.cancel(run)

    asyncio.run(main())


def test_cancel_on_interrupt_cancels_the_run_when_the_asyncio_task_is_cancelled(url: str) -> None:
    async def main() -> None:
        async with longrun.AsyncClient(url) as c:
            follow_run = await c.submit("sleep", SLEEP_FOREVER)
            got_first = asyncio.Event()

            async def follow() -> None:
                async for _ in c.follow(follow_run, cancel_on_interrupt=True):
                    got_first.set()

            task = asyncio.ensure_future(follow())
            await got_first.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 60)
            # The cancel was sent before CancelledError came out: the run ends canceled.
            with pytest.raises(longrun.Canceled):
                await c.wait(follow_run, timeout=60)

            wait_run = await c.submit("sleep", SLEEP_FOREVER)
            started = asyncio.Event()

            async def wait() -> None:
                started.set()
                # No await in between: the cancellation can only arrive inside the wait.
                await c.wait(wait_run, cancel_on_interrupt=True)

            task = asyncio.ensure_future(wait())
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 60)
            with pytest.raises(longrun.Canceled):
                await c.wait(wait_run, timeout=60)

    asyncio.run(main())


# --- progress -----------------------------------------------------------------------------


def test_on_progress_and_the_tqdm_helper(client: longrun.Client, url: str) -> None:
    seen: List[Any] = []
    run = client.submit("count", {"n": 4})
    events = list(client.follow(run, on_progress=lambda p: seen.append((p.fraction, p.message))))
    assert seen == [(0.25, "1/4"), (0.5, "2/4"), (0.75, "3/4"), (1.0, "4/4")]
    assert events[1].progress is not None and events[0].progress is None
    emit = client.submit("emit", {"events": [{"message": "only text"}, {"progress": 7}, "x"]})
    got = [e.progress for e in client.follow(emit)]
    assert [(p.fraction, p.message) if p else None for p in got] == [
        None, (None, "only text"), (1.0, None), None, None]

    pytest.importorskip("tqdm")
    from longrun.progress import atqdm_events, tqdm_events

    out = io.StringIO()
    ids = [e.id for e in tqdm_events(client.follow(run), file=out)]
    assert ids == list(range(6)) and "4/4" in out.getvalue() and "100%" in out.getvalue()

    async def main() -> List[int]:
        async with longrun.AsyncClient(url) as ac:
            return [e.id async for e in atqdm_events(ac.follow(run), file=io.StringIO())]

    assert asyncio.run(main()) == list(range(6))


def test_run_events_and_context_managers(client: longrun.Client) -> None:
    run = client.submit("count", {"n": 1})
    assert [e.state for e in run.events()] == ["queued", "running", "success"]
    assert [e.id for e in run.events(since=1)] == [2]
    with pytest.raises(longrun.InvalidArgument):
        longrun.Run.from_url(run.url).events()
    c = longrun.Client(client.base_url)
    with c:
        assert c.exists(run)
    with pytest.raises(longrun.InvalidArgument):
        c.exists(run)


# --- types --------------------------------------------------------------------------------


def test_the_typed_example_passes_mypy_strict(tmp_path: Path) -> None:
    mypy = shutil.which("mypy", path=os.path.dirname(sys.executable)) or shutil.which("mypy")
    if mypy is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mypy is not installed")
        pytest.skip("mypy is not installed")
    example = Path(__file__).with_name("typed_example.py")
    out = subprocess.run([mypy, "--strict", "--no-incremental", str(example)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


# ---- A server with tenants: the token, Unauthorized / Forbidden, idempotency keys ----


def test_a_token_lets_a_tenant_in_and_no_token_is_unauthorized(auth_server: Server) -> None:
    with longrun.Client(auth_server.url, token=TOKEN) as client:
        run = client.submit("echo", {"a": 1})
        assert client.wait(run, timeout=30) == {"a": 1}
        assert "lrt_" not in repr(client)
    for options in ({}, {"token": "lrt_nobody"}):
        with longrun.Client(auth_server.url, **options) as anon:
            with pytest.raises(longrun.Unauthorized) as caught:
                anon.submit("echo")
            err = caught.value
            assert err.kind == "Unauthorized" and err.status == 401
            assert isinstance(err, PermissionError) and isinstance(err, longrun.Error)
            assert err.problem is not None
            assert err.problem["type"] == "urn:longrun:problem:unauthorized"
            assert "lrt_nobody" not in str(err)
            with pytest.raises(longrun.Unauthorized):
                anon.exists(run)
    with longrun.Client(auth_server.url, token=READ_TOKEN) as reader:
        assert reader.exists(run)
        with pytest.raises(longrun.Forbidden) as forbidden:
            reader.submit("echo")
        assert forbidden.value.status == 403
        assert forbidden.value.problem is not None
        assert forbidden.value.problem["type"] == "urn:longrun:problem:forbidden"
    with longrun.Client(auth_server.url, token=OTHER_TOKEN) as other:
        assert not other.exists(run)


def test_the_same_idempotency_key_gives_the_same_run(auth_server: Server) -> None:
    key = f"py-{os.getpid()}-{time.monotonic_ns()}"
    with longrun.Client(auth_server.url, token=TOKEN) as client:
        first = client.submit("echo", {"a": 1}, idempotency_key=key)
        again = client.submit("echo", {"a": 1}, idempotency_key=key)
        assert again.id == first.id
        with pytest.raises(longrun.InvalidArgument) as caught:
            client.submit("echo", {"a": 2}, idempotency_key=key)
        assert caught.value.status == 422
        assert caught.value.problem is not None
        assert caught.value.problem["type"] == "urn:longrun:problem:idempotency-key-reused"
        for bad in ("", "has space", "k" * 256):
            with pytest.raises(longrun.InvalidArgument):
                client.submit("echo", idempotency_key=bad)
        assert client.submit("echo", {"a": 1}).id != first.id


def test_async_submit_takes_an_idempotency_key_and_a_token(auth_server: Server) -> None:
    async def main() -> None:
        key = f"py-async-{os.getpid()}-{time.monotonic_ns()}"
        async with longrun.AsyncClient(auth_server.url, token=TOKEN) as client:
            first = await client.submit("echo", {"a": 1}, idempotency_key=key)
            again = await client.submit("echo", {"a": 1}, idempotency_key=key)
            assert again.id == first.id
        async with longrun.AsyncClient(auth_server.url) as anon:
            with pytest.raises(longrun.Unauthorized):
                await anon.submit("echo")

    asyncio.run(main())
