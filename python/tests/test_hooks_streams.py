"""Submit options (deadline, Prefer: wait, response hooks), ``call``, byte streams and
``verify_webhook``, against the reference server."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import queue
import threading
import time
from typing import Any, Dict, Iterator, List, Tuple

import pytest

import longrun
from conftest import Server

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = "whsec_c2VjcmV0LW9mLWFub3RoZXItc2VydmVy"

Delivery = Tuple[List[Tuple[str, str]], bytes]


class Receiver:
    """An HTTP receiver of response hooks on a free loopback port: each delivery (headers,
    body) goes to ``deliveries``, answered 200 when ``verify_webhook`` accepts it."""

    def __init__(self) -> None:
        self.deliveries: "queue.Queue[Delivery]" = queue.Queue()
        deliveries = self.deliveries

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                try:
                    longrun.verify_webhook(SECRET, self.headers, body)
                    self.send_response(200)
                except longrun.WebhookRejected:
                    self.send_response(400)
                self.end_headers()
                deliveries.put((list(self.headers.items()), body))

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def hook_server() -> Iterator[Server]:
    s = Server("--hook-secret", SECRET, "--hook-allow", "127.0.0.1")
    yield s
    s.stop()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def test_a_hook_reaches_a_receiver_that_verifies_it(
    hook_server: Server, receiver: Receiver
) -> None:
    with longrun.Client(hook_server.url) as client:
        run = client.submit("echo", {"a": 1}, hook=receiver.url, hook_events="ended")
        assert client.wait(run, timeout=30) == {"a": 1}
        # A bound on a broken server, not a synchronisation: the delivery is what ends it.
        headers, body = receiver.deliveries.get(timeout=60)
    longrun.verify_webhook(SECRET, headers, body)
    longrun.verify_webhook(SECRET, dict(headers), body.decode())
    assert run.id.encode() in body
    with pytest.raises(longrun.WebhookRejected):
        longrun.verify_webhook(SECRET, headers, body.replace(b'"a"', b'"b"'))
    with pytest.raises(longrun.WebhookRejected):
        longrun.verify_webhook(OTHER_SECRET, headers, body)
    stale = [
        (k, str(int(time.time()) - 3600) if k.lower() == "webhook-timestamp" else v)
        for k, v in headers
    ]
    with pytest.raises(longrun.WebhookRejected) as rejected:
        longrun.verify_webhook(SECRET, stale, body)
    assert "tolerance" in str(rejected.value)
    assert rejected.value.kind == "WebhookRejected"
    # A wider tolerance accepts the timestamp, and then the signature no longer matches it.
    with pytest.raises(longrun.WebhookRejected) as mismatch:
        longrun.verify_webhook(SECRET, stale, body, tolerance=7200)
    assert "signature" in str(mismatch.value)
    missing = [(k, v) for k, v in headers if k.lower() != "webhook-signature"]
    with pytest.raises(longrun.WebhookRejected):
        longrun.verify_webhook(SECRET, missing, body)
    with pytest.raises(longrun.InvalidArgument):
        longrun.verify_webhook("whsec_%%", headers, body)
    with pytest.raises(longrun.InvalidArgument):
        longrun.verify_webhook(SECRET, headers, body, tolerance=-1)


def test_hook_options_are_checked(hook_server: Server, url: str) -> None:
    with longrun.Client(hook_server.url) as client:
        with pytest.raises(longrun.InvalidArgument):
            client.submit("echo", hook="ftp://example.com/x")
        with pytest.raises(longrun.InvalidArgument):
            client.submit("echo", hook="http://127.0.0.1:9/x", hook_events="some")
    # A server started without --hook-secret refuses hooks (422 hook-refused).
    with longrun.Client(url) as client:
        with pytest.raises(longrun.InvalidArgument) as refused:
            client.submit("echo", hook="http://127.0.0.1:9/x")
        assert refused.value.status == 422


def test_a_deadline_ends_the_run_canceled(url: str) -> None:
    with longrun.Client(url) as client:
        run = client.submit("sleep", {"ms": 3_600_000}, deadline=0.2)
        with pytest.raises(longrun.Canceled) as canceled:
            client.wait(run, timeout=60)
        assert canceled.value.value["reason"] == "deadline"
        with pytest.raises(longrun.Canceled) as called:
            client.call("sleep", {"ms": 3_600_000}, deadline=0.2)
        assert called.value.value["reason"] == "deadline"
        for bad in (0, -1, 365 * 86400):
            with pytest.raises(longrun.InvalidArgument):
                client.submit("echo", deadline=bad)
        with pytest.raises(longrun.InvalidArgument):
            client.submit("echo", bogus=1)  # type: ignore[call-arg]


def test_wait_returns_the_ended_run(url: str) -> None:
    with longrun.Client(url) as client:
        run = client.submit("echo", {"a": 1}, wait=30)
        # The server held the submit until the run ended: it is over before any follow.
        assert client.status(run).state == "success"
        assert client.call("echo", {"b": 2}) == {"b": 2}
        with pytest.raises(longrun.RunFailed):
            client.call("fail", {"message": "no"})
        for bad in (0, 61):
            with pytest.raises(longrun.InvalidArgument):
                client.submit("echo", wait=bad)


def test_the_bytes_stream_downloads_whole_and_matches_its_sha256(url: str) -> None:
    with longrun.Client(url) as client:
        run = client.submit("bytes", {"n": 1_000_000, "chunk": 65_536})
        digest = hashlib.sha256()
        size = 0
        for chunk in client.stream(run):
            assert isinstance(chunk, bytes)
            digest.update(chunk)
            size += len(chunk)
        result = client.wait(run, timeout=60)
        assert result == {"n": 1_000_000, "sha256": digest.hexdigest()}
        assert size == 1_000_000
        # A run without a stream: NotFound.
        echo = client.submit("echo", {}, wait=30)
        with pytest.raises(longrun.NotFound):
            list(client.stream(echo))


def test_async_submit_options_call_and_stream(url: str) -> None:
    async def main() -> Dict[str, Any]:
        async with longrun.AsyncClient(url) as client:
            run = await client.submit("sleep", {"ms": 3_600_000}, deadline=0.2)
            with pytest.raises(longrun.Canceled) as canceled:
                await client.wait(run, timeout=60)
            assert canceled.value.value["reason"] == "deadline"
            ended = await client.submit("echo", {"a": 1}, wait=30)
            assert (await client.status(ended)).state == "success"
            assert await client.call("echo", {"c": 3}) == {"c": 3}
            streamed = await client.submit("bytes", {"n": 300_000, "chunk": 10_000})
            digest = hashlib.sha256()
            async for chunk in client.stream(streamed):
                digest.update(chunk)
            result: Dict[str, Any] = await client.wait(streamed, timeout=60)
            assert result["sha256"] == digest.hexdigest()
            return result

    assert asyncio.run(main())["n"] == 300_000
