"""longrun: long-running calls over plain HTTP (the longrun/1 protocol).

Submit a run, follow its events live (SSE or long polling) with automatic resume, cancel it,
check it, wait for its result — in plain Python (``Client``) or asyncio (``AsyncClient``).
Everything about the protocol lives in the Rust core this package wraps; this layer only makes
the API Pythonic::

    import longrun
    with longrun.Client("http://127.0.0.1:8080") as client:
        run = client.submit("count", {"n": 3})
        for event in client.follow(run):
            print(event.id, event.state, event.value)
        print(client.wait(run, timeout=60))
"""

from __future__ import annotations

import asyncio
import builtins
import datetime

from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterator,
    Callable,
    ClassVar,
    Dict,
    Generic,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    TypedDict,
    TypeVar,
    Union,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

from . import _native
from ._errors import (
    KINDS,
    Canceled,
    Error,
    Forbidden,
    Gone,
    InvalidArgument,
    NotFound,
    Protocol,
    RunCanceled,
    RunFailed,
    Server,
    Timeout,
    Transport,
    Unauthorized,
    WebhookRejected,
)
from ._native import Event, Progress

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "CancelOutcome",
    "ListedRun",
    "ObjectInfo",
    "RunPage",
    "Canceled",
    "Client",
    "ClientOptions",
    "Error",
    "Event",
    "Forbidden",
    "Gone",
    "InvalidArgument",
    "KINDS",
    "NotFound",
    "Progress",
    "Protocol",
    "Publication",
    "Run",
    "RunCanceled",
    "RunFailed",
    "RunStatus",
    "Server",
    "Timeout",
    "Transport",
    "Unauthorized",
    "SubmitOptions",
    "AsyncSubscription",
    "Subscription",
    "WebhookRejected",
    "verify_webhook",
]

#: How many events cross from Rust in one call when they are already there.
_BATCH = 1024

OnProgress = Callable[[Progress], None]
_N = TypeVar("_N", _native.Client, _native.AsyncClient)
Headers = Union[Mapping[str, str], Sequence[Tuple[str, str]]]


class ClientOptions(TypedDict, total=False):
    """The keyword arguments of ``Client`` and ``AsyncClient``, for type checkers only: they
    go to the Rust core as they are (its ``ClientOptions`` reads them, and refuses an unknown
    one with ``InvalidArgument``), so an option the core adds works before it is listed here.
    Durations are in seconds. Every option left out (or None) keeps the core's default."""

    #: Sent as ``Authorization: Bearer <token>`` (a server with tenants needs one; without it,
    #: or with one it does not know, calls raise ``Unauthorized``, and ``Forbidden`` when the
    #: token lacks the scope). Never shown in a repr or an error.
    token: Optional[str]
    #: Time limit of one request (submit, cancel, exists; connecting for a follow). 30 s.
    timeout: Optional[float]
    #: Headers sent with every request: a mapping, or ``(name, value)`` pairs.
    headers: Optional[Headers]
    #: Default transport of follows: ``"sse"`` (falling back to ``"poll"`` by itself) or ``"poll"``;
    #: or ``"ws"``: every call over one WebSocket per client (spec §28).
    transport: Optional[str]
    user_agent: Optional[str]
    #: How long the server may hold one long poll. 20 s.
    poll_wait: Optional[float]
    #: A follow connection on which nothing arrives this long is dropped and resumed. 45 s.
    idle_timeout: Optional[float]
    #: An SSE connection that delivers nothing this long after opening is taken for a
    #: buffering proxy, and the follow switches to long polling. 10 s.
    sse_fallback_after: Optional[float]
    #: Consecutive failed reconnects a follow allows before it gives up. 10.
    reconnect_attempts: Optional[int]
    #: The first reconnect delay, before the server sends its own ``retry`` hint. 1 s.
    reconnect_delay: Optional[float]
    #: The longest reconnect delay (delays double per failure). 30 s.
    reconnect_max_delay: Optional[float]


class SubmitOptions(TypedDict, total=False):
    """The keyword arguments of ``submit`` and ``call``, for type checkers only: like
    ``ClientOptions`` they go to the Rust core as they are (its ``SubmitOptions`` reads them
    and refuses an unknown one with ``InvalidArgument``). Durations are in seconds."""

    #: Sent as ``Idempotency-Key`` (1 to 255 visible ASCII characters, e.g. a UUID): the
    #: server answers a submit that repeats it with the first one's run, and refuses it with
    #: other arguments (``InvalidArgument``, status 422). With a key, a submit whose
    #: connection fails before the reply is sent again with the same key; without one it is
    #: never sent twice.
    idempotency_key: Optional[str]
    #: Sent as ``Longrun-Deadline``: a run still going this many seconds after the submit is
    #: stopped and ends ``canceled`` with ``{"reason": "deadline"}``, queued or running.
    deadline: Optional[float]
    #: Sent as ``Prefer: wait=N`` (1 to 60 s, rounded up): the server holds the submit until
    #: the run ends, up to this long, so the run returned may already be over. (``call``
    #: asks for its own wait.)
    wait: Optional[float]
    #: Sent as ``Longrun-Hook``: where the server pushes the run's outcome — an
    #: ``http(s)://`` URL (a signed POST; check it with ``verify_webhook``) or
    #: ``unix:///path/to.sock``.
    hook: Optional[str]
    #: Sent as ``Longrun-Hook-Events``: ``"ended"`` (the server's default) or ``"all"``.
    hook_events: Optional[str]


WebhookHeaders = Union[Mapping[str, str], Sequence[Tuple[str, str]], Any]


def verify_webhook(
    secret: str,
    headers: WebhookHeaders,
    body: Union[bytes, bytearray, memoryview, str],
    tolerance: Optional[float] = None,
) -> None:
    """Check a response hook's delivery, on the receiving side: ``secret`` is the server's
    ``--hook-secret`` (``whsec_…``), ``headers`` the request's headers (a mapping — a dict,
    or any object with ``items()`` such as a framework's headers — or ``(name, value)``
    pairs), ``body`` its bytes exactly as received, ``tolerance`` how many seconds the
    ``webhook-timestamp`` may be from now (default 300). Returns None when the delivery is
    authentic; raises ``WebhookRejected`` (a missing header, a stale timestamp, no matching
    signature: answer 4xx and ignore it), or ``InvalidArgument`` for a malformed secret."""
    items = getattr(headers, "items", None)
    pairs = [(str(k), str(v)) for k, v in items()] if callable(items) else list(headers)
    data = body.encode() if isinstance(body, str) else bytes(body)
    _native.verify_webhook(secret, pairs, data, tolerance)


class RunStatus(NamedTuple):
    """What ``status`` reports: the run's state and the id of its newest event."""

    state: str
    last_event_id: int


class CancelOutcome(NamedTuple):
    """The answer to ``cancel``: ``outcome`` is ``"accepted"`` (the run will end
    ``canceled``) or ``"ended"`` (it had already ended in ``state``, nothing changed)."""

    outcome: str
    state: Optional[str]

    @property
    def accepted(self) -> bool:
        return self.outcome == "accepted"


class ListedRun(NamedTuple):
    """One run of ``list_runs``: its handle, state, and when it was created and ended (aware
    UTC datetimes; ``ended`` is ``None`` while it goes on), and its tenant on a server with
    tenants."""

    run: Run
    state: str
    created: datetime.datetime
    ended: Optional[datetime.datetime]
    tenant: Optional[str]


class RunPage(NamedTuple):
    """One page of ``list_runs``, newest first; ``next_page_token`` asks for the next page
    (``None`` on the last)."""

    runs: List[ListedRun]
    next_page_token: Optional[str]


class ObjectInfo(NamedTuple):
    """One object of the server's catalogue (``GET /_objects``): ``kind`` is ``builtin``,
    ``exec``, ``handler``, ``service`` or ``composition``; ``args_schema`` is the JSON Schema
    the server checks a submit's arguments against; ``stream`` says whether its runs have a
    byte stream."""

    name: str
    kind: str
    description: Optional[str]
    args_schema: Any
    stream: bool


def _time(text: str) -> datetime.datetime:
    # RFC 3339's "Z", which fromisoformat reads only from Python 3.11.
    return datetime.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)


def _query(
    object: Optional[str], state: Optional[str], limit: Optional[int], page_token: Optional[str]
) -> Dict[str, Any]:
    return {"object": object, "state": state, "limit": limit, "page_token": page_token}


class Publication(NamedTuple):
    """One publication of a topic (spec §28.5). ``offset`` is dense per topic: a jump means
    publications left the server's history before a lost subscription came back."""

    topic: str
    offset: int
    data: Any


class Subscription:
    """The publications of a topic (or a ``*``/``?`` pattern) in order, each once, resumed from
    the next offset after the WebSocket is lost. Iterate it; ``close()`` (or leaving a ``with``
    block) unsubscribes. ``offset`` and ``recovered`` are the server's ack: the topic's next
    offset when it subscribed, and ``False`` when ``since`` asked for publications it no longer
    holds."""

    def __init__(self, native: _native.Publications) -> None:
        self._native: Optional[_native.Publications] = native
        self.offset = native.offset
        self.recovered = native.recovered

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> Publication:
        if self._native is None:
            raise StopIteration
        p = self._native.next()
        if p is None:
            self._native = None
            raise StopIteration
        return Publication(*p)

    def close(self) -> None:
        self._native = None

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSubscription:
    """``async for publication in subscription`` — see ``Subscription``; ``await
    subscription.close()`` or ``async with`` unsubscribes."""

    def __init__(self, native: _native.AsyncPublications) -> None:
        self._native: Optional[_native.AsyncPublications] = native
        self.offset = native.offset
        self.recovered = native.recovered

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> Publication:
        if self._native is None:
            raise StopAsyncIteration
        p = await self._native.next()
        if p is None:
            self._native = None
            raise StopAsyncIteration
        return Publication(*p)

    async def close(self) -> None:
        self._native = None

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Run:
    """A handle on a run: ``object``, ``id`` and ``url``. The URL is the portable resume token:
    ``Run.from_url(url)`` rebuilds the handle in another process (or language)."""

    __slots__ = ("_run", "_client")

    def __init__(self, base_url: str, object: str, id: str) -> None:
        self._run = _native.Run(base_url, object, id)
        self._client: Optional[_ClientBase[Any]] = None

    @classmethod
    def _wrap(cls, run: _native.Run, client: Optional[_ClientBase[Any]]) -> Run:
        self = cls.__new__(cls)
        self._run = run
        self._client = client
        return self

    @classmethod
    def from_url(cls, url: str) -> Run:
        """The run at ``url`` (e.g. ``http://host:8080/count/0f8fad5b-…``)."""
        return cls._wrap(_native.Run.from_url(url), None)

    @property
    def object(self) -> str:
        return self._run.object

    @property
    def id(self) -> str:
        return self._run.id

    @property
    def url(self) -> str:
        return self._run.url

    def events(
        self, since: Optional[int] = None, transport: Optional[str] = None
    ) -> Iterator[Event]:
        """Follow this run with the (sync) client that made the handle."""
        client = self._client
        if not isinstance(client, Client):
            raise InvalidArgument(
                "this Run has no sync client; use client.follow(run) "
                "(or client.run(...) to get a handle bound to it)"
            )
        return client.follow(self, since=since, transport=transport)

    def __eq__(self, other: builtins.object) -> bool:
        return isinstance(other, Run) and self._run == other._run

    def __hash__(self) -> int:
        return hash(self._run)

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return repr(self._run)


def _report(batch: list[Event], on_progress: OnProgress) -> None:
    for event in batch:
        progress = event.progress
        if progress is not None:
            on_progress(progress)


class _ClientBase(Generic[_N]):
    """What ``Client`` and ``AsyncClient`` share: the options (one signature for both), the
    native client, ``base_url`` and ``run``."""

    _native_type: ClassVar[Callable[..., Any]]

    def __init__(self, base_url: str, **options: Unpack[ClientOptions]) -> None:
        self._native: Optional[_N] = self._native_type(base_url, options)
        self._base_url = self._native.base_url

    @property
    def _n(self) -> _N:
        if self._native is None:
            raise InvalidArgument("the client is closed")
        return self._native

    @property
    def base_url(self) -> str:
        return self._base_url

    def run(self, object: str, id: str) -> Run:
        """A handle on an existing run of this server."""
        return Run._wrap(self._n.run(object, id), self)

    def _page(
        self, runs: List[Tuple[Any, str, str, Optional[str], Optional[str]]], token: Optional[str]
    ) -> RunPage:
        listed = [
            ListedRun(
                Run._wrap(run, self), state, _time(created), _time(ended) if ended else None, tenant
            )
            for run, state, created, ended, tenant in runs
        ]
        return RunPage(listed, token)


class Client(_ClientBase[_native.Client]):
    """A blocking longrun/1 client for the server at ``base_url`` (``http://host:8080``, or
    ``unix:///run/longrun.sock`` for one on a unix socket); its keyword arguments are
    ``ClientOptions``. The GIL is
    released while the client waits on the network; Ctrl-C interrupts a blocking ``follow``
    or ``wait``."""

    _native_type = _native.Client

    def close(self) -> None:
        """Drop the client's connections and runtime. Runs go on."""
        self._native = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"longrun.Client({self._base_url!r})"

    def submit(
        self,
        object: str,
        args: Optional[Mapping[str, Any]] = None,
        **options: Unpack[SubmitOptions],
    ) -> Run:
        """Start a run of ``object`` with ``args`` (a JSON object). The keyword arguments
        are ``SubmitOptions``: ``idempotency_key``, ``deadline`` (seconds), ``wait``
        (seconds the server may hold the submit until the run ends), ``hook`` and
        ``hook_events`` (a response hook)."""
        return Run._wrap(self._n.submit(object, args, options), self)

    def call(
        self,
        object: str,
        args: Optional[Mapping[str, Any]] = None,
        *,
        timeout: Optional[float] = None,
        **options: Unpack[SubmitOptions],
    ) -> Any:
        """Submit and return the run's ``success`` value, in one exchange when the run ends
        within the server's wait (``Prefer: wait``), else followed as ``wait`` does. Raises as
        ``wait`` does (``RunFailed``, ``Canceled``, ``Timeout`` after ``timeout`` seconds: the
        run goes on). The keyword arguments are ``SubmitOptions`` (``deadline``, …)."""
        return self._n.call(object, args, options, timeout)

    def stream(self, run: Run) -> Iterator[bytes]:
        """The run's byte stream (spec §27) as chunks of ``bytes``: live while the run goes
        on, every byte once and in order, resumed after a disconnect from the count of bytes
        received; ends when the run has ended and every byte was read. ``NotFound`` for a run
        without a stream. Ctrl-C interrupts it."""
        chunks = self._n.stream(run._run)
        while True:
            chunk = chunks.next_chunk()
            if chunk is None:
                return
            yield chunk

    def follow(
        self,
        run: Run,
        since: Optional[int] = None,
        transport: Optional[str] = None,
        *,
        on_progress: Optional[OnProgress] = None,
        cancel_on_interrupt: bool = False,
    ) -> Iterator[Event]:
        """The run's events after ``since`` (from event 0 without it), in order and each once,
        ending after the terminal event; the follow resumes by itself after disconnects.
        ``transport``: ``"sse"`` or ``"poll"``. ``on_progress`` is called with the progress
        of each ``running`` event that reports some. With ``cancel_on_interrupt``, Ctrl-C
        also cancels the run before ``KeyboardInterrupt`` propagates."""
        events = self._n.follow(run._run, since, transport)
        return self._iterate(run, events, on_progress, cancel_on_interrupt)

    def _iterate(
        self,
        run: Run,
        events: _native.Events,
        on_progress: Optional[OnProgress],
        cancel_on_interrupt: bool,
    ) -> Iterator[Event]:
        while True:
            try:
                batch = events.next_batch(_BATCH)
            except KeyboardInterrupt:
                if cancel_on_interrupt:
                    self.cancel(run)
                raise
            if not batch:
                return
            if on_progress is not None:
                _report(batch, on_progress)
            yield from batch

    def subscribe(self, topic: str, since: Optional[int] = None) -> Subscription:
        """Subscribe to ``topic`` (a dotted name, or a pattern with ``*`` and ``?``), from
        offset ``since`` if given (one topic only; from now otherwise), over the client's
        WebSocket whatever its transport. Returns once the server holds the subscription, so
        nothing published after that is missed. ``InvalidArgument`` for a bad topic."""
        return Subscription(self._n.subscribe(topic, since))

    def publish(self, topic: str, data: Any) -> int:
        """Publish ``data`` (any JSON value) to ``topic``; its offset."""
        return self._n.publish(topic, data)

    def cancel(self, run: Run) -> CancelOutcome:
        """Ask the server to cancel the run."""
        outcome, state = self._n.cancel(run._run)
        return CancelOutcome(outcome, state)

    def status(self, run: Run) -> RunStatus:
        """The run's state and newest event id; ``NotFound`` if there is no such run."""
        state, last = self._n.status(run._run)
        return RunStatus(state, last)

    def exists(self, run: Run) -> bool:
        """Does the run exist? ``Gone`` if its retention has passed."""
        return self._n.exists(run._run)

    def list_runs(
        self,
        *,
        object: Optional[str] = None,
        state: Optional[str] = None,
        limit: Optional[int] = None,
        page_token: Optional[str] = None,
    ) -> RunPage:
        """One page of the runs this client's token sees, newest first (``GET /_runs``):
        only ``object``'s, only in ``state`` (a state, or ``"active"`` / ``"ended"``), at most
        ``limit`` (from 1; the server's default is 50, and more than 1000 counts as 1000),
        after the page ``page_token`` ended."""
        runs, token = self._n.list_runs(_query(object, state, limit, page_token))
        return self._page(runs, token)

    def runs(
        self,
        *,
        object: Optional[str] = None,
        state: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> Iterator[ListedRun]:
        """Every run ``list_runs`` selects, page after page (``limit`` is the page size);
        pages never repeat a run."""
        token: Optional[str] = None
        while True:
            page = self.list_runs(object=object, state=state, limit=limit, page_token=token)
            yield from page.runs
            token = page.next_page_token
            if token is None:
                return

    def objects(self) -> List[ObjectInfo]:
        """The server's objects, sorted by name (``GET /_objects``)."""
        return [ObjectInfo(*o) for o in self._n.objects()]

    def object(self, name: str) -> ObjectInfo:
        """One object of the catalogue; ``NotFound`` when the server has none of this name."""
        return ObjectInfo(*self._n.object(name)[0])

    def wait(
        self,
        run: Run,
        timeout: Optional[float] = None,
        *,
        cancel_on_interrupt: bool = False,
    ) -> Any:
        """The run's ``success`` value. Raises ``RunFailed`` or ``Canceled`` (with the event's
        ``value``), or ``Timeout`` after ``timeout`` seconds — the run goes on then."""
        try:
            return self._n.wait(run._run, timeout)
        except KeyboardInterrupt:
            if cancel_on_interrupt:
                self.cancel(run)
            raise


class AsyncClient(_ClientBase[_native.AsyncClient]):
    """The asyncio client: the same verbs as ``Client``, awaitable; ``follow`` is an async
    iterator. Cancelling the task that awaits stops the follow or wait promptly."""

    _native_type = _native.AsyncClient

    async def close(self) -> None:
        self._native = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"longrun.AsyncClient({self._base_url!r})"

    async def submit(
        self,
        object: str,
        args: Optional[Mapping[str, Any]] = None,
        **options: Unpack[SubmitOptions],
    ) -> Run:
        """Start a run; see ``Client.submit``."""
        return Run._wrap(await self._n.submit(object, args, options), self)

    async def call(
        self,
        object: str,
        args: Optional[Mapping[str, Any]] = None,
        *,
        timeout: Optional[float] = None,
        **options: Unpack[SubmitOptions],
    ) -> Any:
        """Submit and the run's ``success`` value; see ``Client.call``."""
        return await self._n.call(object, args, options, timeout)

    async def stream(self, run: Run) -> AsyncIterator[bytes]:
        """``async for chunk in client.stream(run): ...`` — see ``Client.stream``."""
        chunks = self._n.stream(run._run)
        while True:
            chunk = await chunks.next_chunk()
            if chunk is None:
                return
            yield chunk

    def follow(
        self,
        run: Run,
        since: Optional[int] = None,
        transport: Optional[str] = None,
        *,
        on_progress: Optional[OnProgress] = None,
        cancel_on_interrupt: bool = False,
    ) -> AsyncIterator[Event]:
        """``async for event in client.follow(run): ...`` — see ``Client.follow``. With
        ``cancel_on_interrupt``, cancelling the task that iterates (as Ctrl-C does to
        ``asyncio.run``'s task) also cancels the run before ``CancelledError`` propagates."""
        events = self._n.follow(run._run, since, transport)
        return self._iterate(run, events, on_progress, cancel_on_interrupt)

    async def _iterate(
        self,
        run: Run,
        events: _native.AsyncEvents,
        on_progress: Optional[OnProgress],
        cancel_on_interrupt: bool,
    ) -> AsyncIterator[Event]:
        # The core reads ahead on its runtime: a batch that is already there is taken without
        # a future. Cancelling a pending read when the loop ends loses nothing (the stream's
        # next_batch is cancel-safe) and closes the follow.
        pending: Optional[asyncio.Future[_native.RawBatch]] = None
        try:
            while True:
                batch = events.try_next_batch(_BATCH)
                if batch is None:
                    pending = events.next_batch(_BATCH)
                    batch = (await pending).take()
                    pending = None
                if not batch:
                    return
                if on_progress is not None:
                    _report(batch, on_progress)
                for event in batch:
                    yield event
        except (asyncio.CancelledError, KeyboardInterrupt):
            if cancel_on_interrupt:
                await self.cancel(run)
            raise
        finally:
            if pending is not None:
                pending.cancel()

    async def subscribe(self, topic: str, since: Optional[int] = None) -> AsyncSubscription:
        """Subscribe once the server holds the subscription; see ``Client.subscribe``."""
        return AsyncSubscription(await self._n.subscribe(topic, since))

    async def publish(self, topic: str, data: Any) -> int:
        """Publish ``data`` to ``topic``; its offset."""
        return await self._n.publish(topic, data)

    async def cancel(self, run: Run) -> CancelOutcome:
        outcome, state = await self._n.cancel(run._run)
        return CancelOutcome(outcome, state)

    async def status(self, run: Run) -> RunStatus:
        state, last = await self._n.status(run._run)
        return RunStatus(state, last)

    async def exists(self, run: Run) -> bool:
        return await self._n.exists(run._run)

    async def list_runs(
        self,
        *,
        object: Optional[str] = None,
        state: Optional[str] = None,
        limit: Optional[int] = None,
        page_token: Optional[str] = None,
    ) -> RunPage:
        """See ``Client.list_runs``."""
        runs, token = await self._n.list_runs(_query(object, state, limit, page_token))
        return self._page(runs, token)

    async def runs(
        self,
        *,
        object: Optional[str] = None,
        state: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> AsyncIterator[ListedRun]:
        """See ``Client.runs``: an async iterator."""
        token: Optional[str] = None
        while True:
            page = await self.list_runs(object=object, state=state, limit=limit, page_token=token)
            for run in page.runs:
                yield run
            token = page.next_page_token
            if token is None:
                return

    async def objects(self) -> List[ObjectInfo]:
        """See ``Client.objects``."""
        return [ObjectInfo(*o) for o in await self._n.objects()]

    async def object(self, name: str) -> ObjectInfo:
        """See ``Client.object``."""
        return ObjectInfo(*(await self._n.object(name))[0])

    async def wait(
        self, run: Run, timeout: Optional[float] = None, *, cancel_on_interrupt: bool = False
    ) -> Any:
        """See ``Client.wait``. With ``cancel_on_interrupt``, cancelling the task that awaits
        also cancels the run before ``CancelledError`` propagates."""
        try:
            return await self._n.wait(run._run, timeout)
        except (asyncio.CancelledError, KeyboardInterrupt):
            if cancel_on_interrupt:
                await self.cancel(run)
            raise
