"""The run list (``GET /_runs``) and the object catalogue (``GET /_objects``), sync and asyncio,
on a server of this module's own so the list holds only its runs."""

from __future__ import annotations

import asyncio
import datetime
from typing import Iterator

import pytest

import longrun

from conftest import Server


@pytest.fixture(scope="module")
def own_url() -> Iterator[str]:
    server = Server()
    try:
        yield server.url
    finally:
        server.stop()


def test_list_runs_pages_newest_first_and_runs_walks_every_page(own_url: str) -> None:
    with longrun.Client(own_url) as client:
        echoes = []
        for i in range(5):
            run = client.submit("echo", {"i": i})
            client.wait(run)
            echoes.append(run)
        sleeper = client.submit("sleep", {"ms": 3_600_000})
        try:
            page = client.list_runs()
            assert page.next_page_token is None
            assert [r.run for r in page.runs] == [sleeper, *reversed(echoes)]
            first = page.runs[-1]
            assert isinstance(first.run, longrun.Run) and first.run.url == echoes[0].url
            assert first.state == "success"
            assert first.created.tzinfo == datetime.timezone.utc
            assert first.ended is not None and first.ended >= first.created
            assert first.tenant is None

            active = client.list_runs(state="active")
            assert [(r.run, r.ended) for r in active.runs] == [(sleeper, None)]

            two = client.list_runs(object="echo", limit=2)
            assert len(two.runs) == 2 and isinstance(two.next_page_token, str)
            nxt = client.list_runs(object="echo", limit=2, page_token=two.next_page_token)
            assert [r.run for r in nxt.runs] == [echoes[2], echoes[1]]

            walked = [r.run for r in client.runs(object="echo", limit=2)]
            assert walked == list(reversed(echoes)), "each once, in order, over three pages"
        finally:
            client.cancel(sleeper)


@pytest.mark.parametrize(
    "query",
    [{"state": "sleeping"}, {"limit": 0}, {"limit": -1}, {"page_token": "not-a-token"}],
)
def test_a_bad_query_is_invalid_argument(own_url: str, query: dict) -> None:
    with longrun.Client(own_url) as client:
        with pytest.raises(longrun.InvalidArgument):
            client.list_runs(**query)


def test_objects_is_the_catalogue_and_object_one_entry(own_url: str) -> None:
    with longrun.Client(own_url) as client:
        objects = client.objects()
        names = [o.name for o in objects]
        assert names == sorted(names) and {"count", "bytes"} <= set(names)
        count = next(o for o in objects if o.name == "count")
        assert (count.kind, count.stream) == ("builtin", False)
        assert count.args_schema["type"] == "object" and "n" in count.args_schema["properties"]
        assert client.object("count") == count
        assert client.object("bytes").stream is True
        with pytest.raises(longrun.NotFound):
            client.object("no-such-object")


def test_the_asyncio_client_lists_runs_and_objects(own_url: str) -> None:
    async def main() -> None:
        async with longrun.AsyncClient(own_url) as client:
            run = await client.submit("echo", {"async": True})
            await client.wait(run)
            page = await client.list_runs(object="echo", limit=1)
            assert [r.run for r in page.runs] == [run]
            walked = [r.run async for r in client.runs(object="echo", limit=2)]
            assert walked[0] == run and len(walked) == len(set(walked))
            assert (await client.object("echo")) in await client.objects()
            with pytest.raises(longrun.NotFound):
                await client.object("no-such-object")

    asyncio.run(main())
