"""Pubsub (spec §28.5) through the package: ``subscribe`` returns once the server holds the
subscription, publications arrive in order with their offsets, ``since`` replays, patterns
name the topic that matched, the run feeds, tenants, and asyncio."""

from __future__ import annotations

import asyncio
import uuid

import pytest

import longrun

from conftest import OTHER_TOKEN, TOKEN, Server


def topic(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex}"


def test_subscribe_returns_ready_and_publications_come_in_order(url: str) -> None:
    t = topic("orders")
    with longrun.Client(url) as c, longrun.Client(url, transport="ws") as ws:
        c.publish(t, "before")
        with c.subscribe(t) as sub:
            # Ready on return: from the topic's next offset on, nothing is missed.
            assert (sub.offset, sub.recovered) == (1, True)
            offsets = [(ws if i % 2 else c).publish(t, {"i": i}) for i in range(5)]
            assert offsets == [1, 2, 3, 4, 5]
            got = [next(sub) for _ in range(5)]
        assert got == [longrun.Publication(t, i + 1, {"i": i}) for i in range(5)]
        # Closed: the iterator is over.
        assert list(sub) == []


def test_since_replays_what_the_server_kept_then_goes_on_live(url: str) -> None:
    t = topic("log")
    with longrun.Client(url) as c:
        for i in range(4):
            c.publish(t, i)
        with c.subscribe(t, since=2) as sub:
            assert (sub.offset, sub.recovered) == (4, True)
            assert [next(sub).data for _ in range(2)] == [2, 3]
            c.publish(t, 4)
            assert next(sub) == longrun.Publication(t, 4, 4)
        # A topic the server does not hold: subscribed, but not recovered.
        with c.subscribe(topic("never"), since=3) as gone:
            assert gone.recovered is False


def test_a_pattern_names_the_topic_that_matched(url: str) -> None:
    room = topic("chat")
    with longrun.Client(url) as c, c.subscribe(f"{room}.*") as sub:
        c.publish(f"{room}.lobby", "hi")
        p = next(sub)
        assert (p.topic, p.offset, p.data) == (f"{room}.lobby", 0, "hi")


def test_bad_topics_are_invalid_arguments(url: str) -> None:
    with longrun.Client(url) as c:
        with pytest.raises(longrun.InvalidArgument):
            c.subscribe("no..dots")
        with pytest.raises(longrun.InvalidArgument):
            c.publish("_runs", {})
        with pytest.raises(longrun.InvalidArgument):
            c.subscribe("a.*", since=0)


def test_the_run_feed_hears_each_run_created_and_ended(url: str) -> None:
    with longrun.Client(url) as c, c.subscribe("_runs.echo") as feed:
        run = c.submit("echo", {"x": 1})
        seen = []
        for p in feed:
            if p.data["id"] == run.id:
                seen.append(p.data["state"])
            if seen == ["queued", "success"]:
                break
        assert p.topic == "_runs.echo"
        assert p.data["object"] == "echo"


def test_tenants_each_have_their_own_topics(auth_server: Server) -> None:
    t = "shared.name"
    with longrun.Client(auth_server.url, token=TOKEN) as mine, longrun.Client(
        auth_server.url, token=OTHER_TOKEN
    ) as other:
        with mine.subscribe(t) as sub:
            other.publish(t, "not for you")
            assert mine.publish(t, "yours") == sub.offset
            assert next(sub).data == "yours"
        with pytest.raises(longrun.Unauthorized):
            longrun.Client(auth_server.url).subscribe(t)


def test_asyncio_subscribe_and_publish(url: str) -> None:
    async def main() -> None:
        t = topic("async")
        async with longrun.AsyncClient(url) as c:
            async with await c.subscribe(t) as sub:
                assert sub.offset == 0
                assert await c.publish(t, [1, 2]) == 0
                assert await c.publish(t, None) == 1
                got = []
                async for p in sub:
                    got.append(p)
                    if len(got) == 2:
                        break
            assert got == [longrun.Publication(t, 0, [1, 2]), longrun.Publication(t, 1, None)]
            with pytest.raises(longrun.InvalidArgument):
                await c.subscribe("bad..topic")
            # A pending read cancelled (a timeout) loses nothing: the next read gets it.
            async with await c.subscribe(t) as sub:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(sub.__anext__(), 0.05)
                await c.publish(t, "late")
                assert (await sub.__anext__()).data == "late"

    asyncio.run(main())
