"""Schemathesis hooks for `cargo xtask test`'s OpenAPI fuzz suite (xtask/src/schemathesis.rs).

They change only what a schema cannot say, in test cases meant to be valid: whether a request
is accepted also depends on the server's state and settings, not on its shape alone.

- `Idempotency-Key`: a key is a promise about earlier submits (spec §4.3): the same key with
  other arguments is 422 `idempotency-key-reused`. Generated keys repeat ("0" for every
  operation), so each valid case gets a fresh one.
- `Longrun-Deadline`: how far a deadline may be is the server's `max_deadline`, and a time in
  the past is refused (spec §4.4); a valid case sends 30 seconds.
- `Longrun-Hook`, `Longrun-Hook-Events`: a hook is refused (422 `hook-refused`) by a server
  without a hook secret, as this one is (spec §26.6); valid cases send none.
- `wait` on a long poll: the server holds a poll up to that many seconds, at most 60 (spec
  §8.2), which is the poll working, not the server being slow; valid cases wait at most 1 s, so
  a poll of a run that never ends (the stateful phase finds `sleep` runs in `GET /_runs`) does
  not stall the suite.
- Integral floats in bodies (`3.0`): JSON Schema counts them as integers, and longrun/1 refuses
  them where it wants an integer (spec §18; conformance `errors-submit.json`), which only the
  wire can tell; valid cases send them as integers (`3`).

Cases meant to be invalid are sent as generated.
"""

import uuid

import schemathesis


def _positive(case):
    meta = getattr(case, "_meta", None)
    return meta is None or meta.generation.mode.value == "positive"


def _integral(value):
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, list):
        return [_integral(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    return value


@schemathesis.hook
def before_call(context, case, kwargs):
    if not _positive(case):
        return
    headers = case.headers
    if headers is not None:
        for name in ("Longrun-Hook", "Longrun-Hook-Events"):
            headers.pop(name, None)
        if "Longrun-Deadline" in headers:
            headers["Longrun-Deadline"] = "30"
        if "Idempotency-Key" in headers:
            headers["Idempotency-Key"] = str(uuid.uuid4())
    query = case.query
    if query is not None and "wait" in query:
        try:
            query["wait"] = min(float(query["wait"]), 1.0)
        except (TypeError, ValueError):
            pass
    if isinstance(case.body, (dict, list, float)):
        case.body = _integral(case.body)
