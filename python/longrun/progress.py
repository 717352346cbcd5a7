"""Progress bars from the progress convention (``{"progress": 0..1, "message": ...}`` in a
``running`` event's value), with tqdm: ``pip install ./python[progress]``.

    for event in longrun.progress.tqdm_events(client.follow(run)):
        ...
"""

from __future__ import annotations

import importlib
from typing import Any, AsyncIterable, AsyncIterator, Iterable, Iterator

from ._native import Event

_STEPS = 1000


def _tqdm(kwargs: dict[str, Any]) -> Any:
    try:
        tqdm = importlib.import_module("tqdm").tqdm
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "longrun.progress needs tqdm: pip install 'longrun[progress]' (or pip install tqdm)"
        ) from e
    kwargs.setdefault("total", _STEPS)
    kwargs.setdefault("bar_format", "{desc} {percentage:3.0f}%|{bar}| {elapsed}")
    return tqdm(**kwargs)


def _update(bar: Any, event: Event) -> None:
    progress = event.progress
    if progress is None:
        return
    if progress.fraction is not None:
        bar.n = round(progress.fraction * bar.total)
    if progress.message is not None:
        bar.set_description_str(progress.message, refresh=False)
    bar.refresh()


def tqdm_events(events: Iterable[Event], **tqdm_kwargs: Any) -> Iterator[Event]:
    """Pass ``events`` through, drawing a tqdm bar from their progress."""
    with _tqdm(tqdm_kwargs) as bar:
        for event in events:
            _update(bar, event)
            yield event


async def atqdm_events(events: AsyncIterable[Event], **tqdm_kwargs: Any) -> AsyncIterator[Event]:
    """``tqdm_events`` for an async follow."""
    with _tqdm(tqdm_kwargs) as bar:
        async for event in events:
            _update(bar, event)
            yield event
