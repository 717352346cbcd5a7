"""A small program over the typed API; `mypy --strict` must accept it (test_client.py)."""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional

import longrun
from longrun.progress import tqdm_events


def follow_and_wait(url: str) -> Any:
    with longrun.Client(url, token=None, timeout=30.0, transport="sse") as client:
        run: longrun.Run = client.submit("count", {"n": 3})
        ids: List[int] = []
        for event in client.follow(run, since=None, transport="poll"):
            ids.append(event.id)
            progress: Optional[longrun.Progress] = event.progress
            if progress is not None and progress.fraction is not None:
                print(f"{progress.fraction:.0%} {progress.message or ''}")
        for event in tqdm_events(run.events(since=1)):
            print(event.state)
        status: longrun.RunStatus = client.status(run)
        print(status.state, status.last_event_id, client.exists(run))
        outcome: longrun.CancelOutcome = client.cancel(run)
        print(outcome.accepted)
        try:
            return client.wait(run, timeout=60, cancel_on_interrupt=True)
        except longrun.RunFailed as e:
            print(e.value, e.status, e.problem)
            raise
        except (longrun.Unauthorized, longrun.Forbidden) as e:
            print(e.kind, e.status)
            raise


async def follow_async(url: str) -> List[str]:
    async with longrun.AsyncClient(url, idle_timeout=45.0, sse_fallback_after=10.0, headers={"x-a": "1"}) as client:
        run = await client.submit("echo", {"a": 1}, idempotency_key="order-17")
        states = [event.state async for event in client.follow(run)]
        value: Any = await client.wait(run)
        print(value, await client.exists(run), (await client.cancel(run)).outcome)
        return states


def pubsub(url: str) -> List[int]:
    with longrun.Client(url) as client, client.subscribe("chat.*") as sub:
        offset: int = client.publish("chat.lobby", {"text": "hi"})
        first: longrun.Publication = next(sub)
        print(first.topic, first.data, sub.recovered)
        return [offset, first.offset, sub.offset]


async def pubsub_async(url: str) -> Optional[longrun.Publication]:
    async with longrun.AsyncClient(url) as client:
        sub: longrun.AsyncSubscription = await client.subscribe("log", since=0)
        async with sub:
            await client.publish("log", [1])
            async for p in sub:
                return p
        return None


if __name__ == "__main__":
    print(follow_and_wait("http://127.0.0.1:8080"))
    print(asyncio.run(follow_async("http://127.0.0.1:8080")))
