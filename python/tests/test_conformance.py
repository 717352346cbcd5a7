"""The SDK runner of spec/conformance (see its README): every scenario, through the sync
`longrun.Client` and through `longrun.AsyncClient`. `http` steps are skipped, and so are the
later steps on runs that only a skipped step saved; a scenario with every step skipped is
reported as skipped."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Dict, Generator, List, NamedTuple, Optional, Set, Tuple, Union

import pytest

import longrun

SPEC = Path(__file__).resolve().parents[2] / "spec" / "conformance"

#: Scenarios this client is known to fail: (flavour, description). A listed scenario that
#: passes fails the run (strict xfail), and so does an entry that names no scenario.
KNOWN_FAILURES: Set[Tuple[str, str]] = set()

FLAVOURS = ("sync", "async")


def _load() -> List[Tuple[str, Dict[str, Any]]]:
    scenarios = []
    for path in sorted(SPEC.glob("*.json")):
        if path.name == "schema.json":
            continue
        data = json.loads(path.read_text())
        for scenario in data["scenarios"]:
            scenarios.append((path.name, scenario))
    return scenarios


SCENARIOS = _load()


def test_scenario_files_are_read_and_descriptions_unique() -> None:
    descriptions = [s["description"] for _, s in SCENARIOS]
    assert len(SCENARIOS) > 50
    assert len(descriptions) == len(set(descriptions))
    for flavour, description in KNOWN_FAILURES:
        assert flavour in FLAVOURS and description in descriptions, description


def _params() -> List[Any]:
    params = []
    for flavour in FLAVOURS:
        for file, scenario in SCENARIOS:
            marks = []
            if (flavour, scenario["description"]) in KNOWN_FAILURES:
                marks.append(pytest.mark.xfail(strict=True))
            params.append(
                pytest.param(flavour, file, scenario, id=f"{flavour}:{file}:{scenario['description']}", marks=marks)
            )
    return params


def same(expected: Any, got: Any) -> bool:
    """JSON equality of the README: numbers as numbers, objects in any order."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(expected) is type(got) and expected == got
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        return float(expected) == float(got)
    if isinstance(expected, list) and isinstance(got, list):
        return len(expected) == len(got) and all(same(a, b) for a, b in zip(expected, got))
    if isinstance(expected, dict) and isinstance(got, dict):
        return expected.keys() == got.keys() and all(same(v, got[k]) for k, v in expected.items())
    return type(expected) is type(got) and expected == got


def as_json(event: longrun.Event) -> Dict[str, Any]:
    return {"id": event.id, "state": event.state, "value": event.value}


class StepFailed(AssertionError):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise StepFailed(what)


def check_error(err: Optional[longrun.Error], expected: Dict[str, Any]) -> None:
    check(err is not None, f"expected the error {expected}, got a success")
    assert err is not None
    check(isinstance(err, longrun.KINDS[expected["kind"]]), f"expected {expected['kind']}, got {err!r}")
    check(err.kind == expected["kind"], f"kind {err.kind!r}")
    check(isinstance(err, longrun.Error), "not a longrun.Error")
    if "status" in expected and err.status is not None:
        check(err.status == expected["status"], f"status {err.status}, expected {expected['status']}")
    if "problem" in expected and err.problem is not None:
        slug = "urn:longrun:problem:" + expected["problem"]
        check(err.problem.get("type") == slug, f"problem {err.problem}, expected {slug}")
    if "value" in expected:
        check(same(expected["value"], err.value), f"value {err.value!r}, expected {expected['value']!r}")


def check_events(step: Dict[str, Any], events: List[longrun.Event]) -> None:
    got = [as_json(e) for e in events]
    expect = step["expect"]
    first = step.get("since", -1) + 1
    check([e["id"] for e in got] == list(range(first, first + len(got))), f"ids not dense from {first}: {[e['id'] for e in got][:20]}")
    if "events" in expect:
        check(same(expect["events"], got), f"events {got}, expected {expect['events']}")
    else:
        check(len(got) == expect["count"], f"{len(got)} events, expected {expect['count']}")
        tail = got[len(got) - len(expect["tail"]):]
        check(same(expect["tail"], tail), f"tail {tail}, expected {expect['tail']}")


Client = Union[longrun.Client, longrun.AsyncClient]


def _run_ref(step: Dict[str, Any], saved: Dict[str, longrun.Run], client: Client) -> longrun.Run:
    ref = step["run"]
    if isinstance(ref, str):
        return saved[ref]
    if "like" in ref:
        return client.run(ref["object"], saved[ref["like"]].id)
    return client.run(ref["object"], ref["id"])


def _skipped_names(steps: List[Dict[str, Any]]) -> Tuple[List[bool], int]:
    """Which steps to skip: http steps, and steps on runs only skipped steps saved."""
    only_http: Set[str] = set()
    skip = []
    for step in steps:
        ref = step.get("run")
        name = ref if isinstance(ref, str) else (ref or {}).get("like")
        s = step["op"] == "http" or (name is not None and name in only_http)
        if "save" in step:
            if s:
                only_http.add(step["save"])
            else:
                only_http.discard(step["save"])
        skip.append(s)
    return skip, sum(skip)


class Call(NamedTuple):
    """A call a step makes: a client method by name, or "follow" (collect the events into the
    last argument, stopping after the id ``until``)."""

    verb: str
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any] = {}


Plan = Generator[Call, Any, None]


def step_plan(step: Dict[str, Any], saved: Dict[str, longrun.Run], client: Client) -> Plan:
    """A step as the calls it makes, written once for both flavours: each runner makes a call
    its way and hands back the result (``yield`` returns it) or the longrun.Error it raised
    (``yield`` raises it); the checks are here."""
    op, expect = step["op"], step["expect"]
    err: Optional[longrun.Error] = None
    if op == "submit":
        try:
            run = yield Call("submit", (step["object"], step.get("args")))
        except longrun.Error as e:
            err = e
        if "error" in expect:
            return check_error(err, expect["error"])
        check(err is None, f"unexpected {err!r}")
        check(run.object == step["object"], f"object {run.object}")
        if "save" in step:
            saved[step["save"]] = run
        return
    run = _run_ref(step, saved, client)
    if op == "follow":
        events: List[longrun.Event] = []
        try:
            yield Call("follow", (run, step.get("since"), step["transport"], step.get("until"), events))
        except longrun.Error as e:
            err = e
        if "error" in expect:
            return check_error(err, expect["error"])
        check(err is None, f"unexpected {err!r} after {len(events)} events")
        return check_events(step, events)
    if op == "exists":
        exists, status = False, None
        try:
            exists = yield Call("exists", (run,))
            if exists and ("state" in expect or "last_event_id" in expect):
                status = yield Call("status", (run,))
        except longrun.Error as e:
            err = e
        if "error" in expect:
            return check_error(err, expect["error"])
        check(err is None, f"unexpected {err!r}")
        return check_exists(expect, exists, status)
    if op == "cancel":
        try:
            outcome = yield Call("cancel", (run,))
        except longrun.Error as e:
            err = e
        if "error" in expect:
            return check_error(err, expect["error"])
        check(err is None, f"unexpected {err!r}")
        check_cancel(expect, outcome)
        if outcome.accepted and expect.get("state") == "canceled":
            status = yield Call("status", (run,))
            check(status.state == "canceled", "not canceled")
        return
    if op == "wait":
        timeout = step.get("timeout_ms")
        value: Any = None
        try:
            value = yield Call("wait", (run,), {"timeout": None if timeout is None else timeout / 1000})
        except longrun.Error as e:
            err = e
        if "error" in expect:
            return check_error(err, expect["error"])
        check(err is None, f"unexpected {err!r}")
        return check(same(expect["value"], value), f"value {value!r}, expected {expect['value']!r}")
    raise StepFailed(f"unknown op {op}")


def check_exists(expect: Dict[str, Any], exists: bool, status: Optional[longrun.RunStatus]) -> None:
    check(exists == expect["exists"], f"exists {exists}")
    if status is not None:
        if "state" in expect:
            check(status.state == expect["state"], f"state {status.state}, expected {expect['state']}")
        if "last_event_id" in expect:
            check(status.last_event_id == expect["last_event_id"], f"last_event_id {status.last_event_id}")


def check_cancel(expect: Dict[str, Any], outcome: longrun.CancelOutcome) -> None:
    check(outcome.outcome == expect["outcome"], f"outcome {outcome}, expected {expect}")
    if outcome.outcome == "ended":
        check(outcome.state == expect["state"], f"state {outcome.state}, expected {expect['state']}")


class Stepper:
    """Walks a plan: ``next`` hands it the last call's ``result`` or ``error`` and returns the
    next call, None once the step is done."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.result: Any = None
        self.error: Optional[longrun.Error] = None

    def next(self) -> Optional[Call]:
        result, error, self.result, self.error = self.result, self.error, None, None
        try:
            return self.plan.send(result) if error is None else self.plan.throw(error)
        except StopIteration:
            return None


def sync_call(client: longrun.Client, call: Call) -> Any:
    if call.verb == "follow":
        run, since, transport, until, events = call.args
        for event in client.follow(run, since=since, transport=transport):
            events.append(event)
            if event.id == until:
                break
        return None
    return getattr(client, call.verb)(*call.args, **call.kwargs)


async def async_call(client: longrun.AsyncClient, call: Call) -> Any:
    if call.verb == "follow":
        run, since, transport, until, events = call.args
        async for event in client.follow(run, since=since, transport=transport):
            events.append(event)
            if event.id == until:
                break
        return None
    return await getattr(client, call.verb)(*call.args, **call.kwargs)


def run_sync(url: str, scenario: Dict[str, Any], **options: Any) -> None:
    skip, _ = _skipped_names(scenario["steps"])
    saved: Dict[str, longrun.Run] = {}
    with longrun.Client(url, **options) as client:
        try:
            for index, (step, skipped) in enumerate(zip(scenario["steps"], skip)):
                if skipped:
                    continue
                steps = Stepper(step_plan(step, saved, client))
                try:
                    while (call := steps.next()) is not None:
                        try:
                            steps.result = sync_call(client, call)
                        except longrun.Error as e:
                            steps.error = e
                except StepFailed as e:
                    raise StepFailed(f"steps[{index}] ({step['op']}): {e}") from None
        finally:
            for run in saved.values():
                try:
                    client.cancel(run)
                except longrun.Error:
                    pass


async def run_async(url: str, scenario: Dict[str, Any], **options: Any) -> None:
    skip, _ = _skipped_names(scenario["steps"])
    saved: Dict[str, longrun.Run] = {}
    async with longrun.AsyncClient(url, **options) as client:

        async def run_step(step: Dict[str, Any]) -> None:
            steps = Stepper(step_plan(step, saved, client))
            while (call := steps.next()) is not None:
                try:
                    steps.result = await async_call(client, call)
                except longrun.Error as e:
                    steps.error = e

        try:
            for index, (step, skipped) in enumerate(zip(scenario["steps"], skip)):
                if skipped:
                    continue
                try:
                    await asyncio.wait_for(run_step(step), 60)
                except StepFailed as e:
                    raise StepFailed(f"steps[{index}] ({step['op']}): {e}") from None
        finally:
            for run in saved.values():
                try:
                    await client.cancel(run)
                except longrun.Error:
                    pass


@pytest.mark.parametrize("flavour,file,scenario", _params())
def test_conformance(
    url: str, flavour: str, file: str, scenario: Dict[str, Any], **options: Any
) -> None:
    skip, skipped = _skipped_names(scenario["steps"])
    if all(skip):
        pytest.skip(f"all {skipped} steps are http steps")
    if flavour == "sync":
        run_sync(url, scenario, **options)
    else:
        asyncio.run(run_async(url, scenario, **options))


@pytest.mark.parametrize("flavour,file,scenario", _params())
def test_conformance_over_a_websocket(
    url: str, flavour: str, file: str, scenario: Dict[str, Any]
) -> None:
    """The same scenarios with every call over one WebSocket per client (spec §28)."""
    test_conformance(url, flavour, file, scenario, transport="ws")


@pytest.mark.parametrize("flavour,file,scenario", _params())
def test_conformance_over_a_unix_socket(
    unix_url: str, flavour: str, file: str, scenario: Dict[str, Any]
) -> None:
    """The same scenarios with a ``unix:///…`` base URL."""
    test_conformance(unix_url, flavour, file, scenario)
