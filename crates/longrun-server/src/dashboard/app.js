// The longrun dashboard (spec §13.7). Everything it shows comes over one WebSocket (§28): the
// runs list (`GET /_runs`) kept live by the `_runs` feed, a run's events as a stream, the
// object catalogue (`GET /_objects`), submits, cancels and the worker nodes. One socket, so a
// page following runs never runs into the browser's six connections per origin.
//
// Text from the server is always set with textContent, never parsed as HTML.

const TOKEN_KEY = "longrun.token";
const TERMINAL = new Set(["success", "error", "canceled"]);
/** Bounds on what the page keeps, however long it stays open. */
const MAX_RUNS = 500;
const MAX_EVENTS = 1000;
const PAGE = 50;
const NODES_EVERY_MS = 5000;

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...children);
  return e;
};

/** A problem reply (RFC 9457 body in `d`) as one line for people. */
function problemText(p) {
  const d = p.d && typeof p.d === "object" ? p.d : {};
  const errors = Array.isArray(d.errors)
    ? d.errors.slice(0, 10).map((e) => `\n  ${e.path || "/"}: ${e.message}`).join("")
    : "";
  return `${p.c} ${d.title ?? ""}${d.detail ? `: ${d.detail}` : ""}${errors}`;
}

/**
 * The socket and its packets: requests correlated by uid alone, streams as several packets of
 * one uid, subscriptions whose publications carry the SUB's uid.
 */
class Socket {
  #ws = null;
  #next = 1;
  #pending = new Map();
  #subs = new Map();
  #backoff = 500;

  constructor(url, { onOpen, onClose }) {
    this.url = url;
    this.onOpen = onOpen;
    this.onClose = onClose;
  }

  open() {
    const ws = new WebSocket(this.url);
    this.#ws = ws;
    ws.onopen = () => {
      this.#backoff = 500;
      this.onOpen();
    };
    ws.onmessage = (m) => this.#dispatch(JSON.parse(m.data));
    ws.onclose = (e) => {
      if (this.#ws !== ws) return;
      this.#ws = null;
      const pending = [...this.#pending.values()];
      this.#pending.clear();
      this.#subs.clear();
      for (const q of pending) q.reject(new Error(`socket closed (${e.code})`));
      this.onClose(e.code);
      setTimeout(() => this.open(), this.#backoff);
      this.#backoff = Math.min(this.#backoff * 2, 10_000);
    };
  }

  /** Close and open again (a token can be replaced over a socket, never taken back). */
  reopen() {
    this.#ws?.close(1000);
  }

  get isOpen() {
    return this.#ws?.readyState === WebSocket.OPEN;
  }

  /** Send a packet; the promise has its last reply packet, `onPacket` sees every one. */
  request(m, r, { h, d, onPacket } = {}) {
    const uid = this.#next++;
    const done = new Promise((resolve, reject) => {
      if (!this.isOpen) return reject(new Error("not connected"));
      this.#pending.set(uid, { resolve, reject, onPacket });
      const packet = { uid, m, r };
      if (h) packet.h = h;
      if (d !== undefined) packet.d = d;
      this.#ws.send(JSON.stringify(packet));
    });
    return { uid, done };
  }

  call(m, r, options) {
    return this.request(m, r, options).done;
  }

  /** SUB: `onPub` gets each publication, in order; the promise has the ack. */
  subscribe(topic, onPub) {
    const { uid, done } = this.request("SUB", topic);
    this.#subs.set(uid, onPub);
    return done;
  }

  #dispatch(p) {
    if (p.m === "PUB" && this.#subs.has(p.uid) && !this.#pending.has(p.uid)) {
      this.#subs.get(p.uid)(p);
      return;
    }
    const q = this.#pending.get(p.uid);
    if (!q) return;
    q.onPacket?.(p);
    if (!p.more) {
      this.#pending.delete(p.uid);
      if (p.m === "SUB" && p.c !== 200) this.#subs.delete(p.uid);
      q.resolve(p);
    }
  }
}

const wsUrl = new URL("/_ws", location.href);
wsUrl.protocol = location.protocol === "https:" ? "wss:" : "ws:";

const page = {
  runs: new Map(), // id → {object, id, url, state, created, ended}
  nextPage: null,
  selected: null, // {object, id, url, state, cursor, stream}
  nodesTimer: null,
};

const socket = new Socket(wsUrl.href, {
  onOpen: () => start().catch((e) => notice(String(e))),
  onClose: (code) => {
    connection(code === 4008 ? "reconnecting (too slow)…" : "reconnecting…", "closed");
    clearTimeout(page.nodesTimer);
  },
});

function connection(text, cls) {
  const c = $("connection");
  c.textContent = text;
  c.className = `pill ${cls}`;
}

function notice(text) {
  const n = $("notice");
  n.textContent = text ?? "";
  n.hidden = !text;
}

/** What every (re)connection does: the token, then every table from the API. */
async function start() {
  connection("connected", "open");
  notice(null);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) {
    const r = await socket.call("AUTH", "", { d: { token } });
    if (r.c !== 200) notice(`The token was refused: ${problemText(r)}`);
  }
  await Promise.all([loadRuns(), loadObjects(), loadNodes()]);
  if (page.selected && !TERMINAL.has(page.selected.state)) follow(page.selected);
}

/** A reply that needs a token says so once, by the token field. */
function needsToken(r) {
  if (r.c !== 401 && r.c !== 403) return false;
  notice(
    r.c === 401
      ? "This server needs a token: enter it above (it is kept for this tab only)."
      : `This token may not do that: ${problemText(r)}`,
  );
  if (r.c === 401) $("token").focus();
  return true;
}

// ---- runs ----------------------------------------------------------------------------------

function filter() {
  return { object: $("filter-object").value.trim(), state: $("filter-state").value };
}

function runsQuery(pageToken) {
  const f = filter();
  const q = new URLSearchParams({ limit: String(PAGE) });
  if (f.object) q.set("object", f.object);
  if (f.state) q.set("state", f.state);
  if (pageToken) q.set("page_token", pageToken);
  return `/_runs?${q}`;
}

function matches(run) {
  const f = filter();
  return (!f.object || run.object === f.object) && (!f.state || run.state === f.state);
}

async function loadRuns() {
  page.runs.clear();
  page.nextPage = null;
  // Subscribe first, then list: a run created in between is in one or the other (or both,
  // which only updates its row), never in neither.
  const f = filter();
  const topic = f.object ? `_runs.${f.object}` : "_runs";
  const ack = await socket.subscribe(topic, (p) => onFeed(p.d.data));
  if (ack.c !== 200 && !needsToken(ack)) notice(`No live updates: ${problemText(ack)}`);
  await moreRuns();
}

async function moreRuns() {
  const r = await socket.call("GET", runsQuery(page.nextPage));
  if (r.c !== 200) {
    if (!needsToken(r)) notice(`Runs: ${problemText(r)}`);
    renderRuns();
    return;
  }
  for (const run of r.d.runs) if (!page.runs.has(run.id)) page.runs.set(run.id, run);
  page.nextPage = r.d.next_page_token ?? null;
  renderRuns();
}

function onFeed({ object, id, state }) {
  let run = page.runs.get(id);
  if (!run) {
    run = { object, id, url: `/${object}/${id}`, state, created: new Date().toISOString(), ended: null };
    if (!matches(run)) return;
    // Newest first: a new run goes to the top.
    page.runs = new Map([[id, run], ...page.runs]);
  }
  setRowState(run, state);
  if (page.selected?.id === id && TERMINAL.has(state)) setRunState(state);
  renderRuns();
}

/** A row's state as last heard; an ended run's end time is when it was first heard of. */
function setRowState(run, state) {
  run.state = state;
  if (TERMINAL.has(state)) run.ended ??= new Date().toISOString();
}

function time(t) {
  return t ? new Date(t).toLocaleTimeString() : "";
}

function renderRuns() {
  while (page.runs.size > MAX_RUNS) page.runs.delete([...page.runs.keys()].at(-1));
  const rows = [...page.runs.values()].map((run) => {
    const open = el("button", { className: "link", type: "button", textContent: run.id.slice(0, 8), title: run.id });
    open.setAttribute("aria-label", `Show run ${run.id} of ${run.object}`);
    open.onclick = () => select(run);
    const tr = el(
      "tr",
      {},
      el("td", {}, open),
      el("td", { textContent: run.object }),
      el("td", { textContent: run.state, className: `state-${run.state}` }),
      el("td", { textContent: time(run.created) }),
      el("td", { textContent: time(run.ended) }),
    );
    tr.dataset.id = run.id;
    tr.dataset.state = run.state;
    if (page.selected?.id === run.id) tr.className = "selected";
    return tr;
  });
  $("runs").tBodies[0].replaceChildren(...rows);
  $("runs-more").hidden = !page.nextPage;
}

// ---- one run -------------------------------------------------------------------------------

function select(run) {
  const old = page.selected;
  if (old?.stream) socket.request("STOP", "", { d: old.stream });
  page.selected = { ...run, cursor: null, stream: null };
  $("run").hidden = false;
  $("run-object").textContent = run.object;
  $("run-id").textContent = run.id;
  $("run-events").replaceChildren();
  $("run-message").textContent = "";
  $("run-progress").removeAttribute("value");
  setRunState(run.state);
  renderRuns();
  follow(page.selected);
  $("run-title").focus?.();
}

function setRunState(state) {
  const s = page.selected;
  s.state = state;
  const dd = $("run-state");
  dd.textContent = state;
  dd.className = `state-${state}`;
  $("run-cancel").disabled = TERMINAL.has(state);
  if (state === "success") $("run-progress").value = 1;
  const row = page.runs.get(s.id);
  if (row && row.state !== state) {
    setRowState(row, state);
    renderRuns();
  }
}

/** §17: a running value may carry `progress` (0..1) and `message`. */
function showProgress(value) {
  if (!value || typeof value !== "object" || Array.isArray(value)) return;
  if (typeof value.progress === "number" && Number.isFinite(value.progress)) {
    $("run-progress").value = Math.min(1, Math.max(0, value.progress));
  }
  if (typeof value.message === "string") $("run-message").textContent = value.message;
}

/** Follow the selected run's events from its cursor: a stream of packets over the socket. */
function follow(run) {
  const h = { accept: "text/event-stream" };
  if (run.cursor !== null) h["last-event-id"] = String(run.cursor);
  const list = $("run-events");
  const { uid, done } = socket.request("GET", run.url, {
    h,
    onPacket: (p) => {
      if (page.selected !== run || p.stopped) return;
      if (p.c >= 400) {
        if (!needsToken(p)) notice(`Run ${run.id}: ${problemText(p)}`);
        return;
      }
      for (const ev of p.d ?? []) {
        run.cursor = ev.id;
        const li = el("li", { value: ev.id }, el("strong", { textContent: ev.state }), ` ${JSON.stringify(ev.value)}`);
        list.append(li);
        if (list.children.length > MAX_EVENTS) list.firstElementChild.remove();
        if (ev.state === "running") showProgress(ev.value);
        setRunState(ev.state);
      }
      list.scrollTop = list.scrollHeight;
    },
  });
  run.stream = uid;
  done.then(
    () => {
      if (run.stream === uid) run.stream = null;
    },
    () => {}, // The socket closed: `start` follows again from the cursor.
  );
}

$("run-cancel").onclick = async () => {
  const run = page.selected;
  const r = await socket.call("DELETE", run.url);
  if (r.c === 202 || r.c === 200) notice(null);
  else if (!needsToken(r)) notice(`Cancel: ${problemText(r)}`);
};

// ---- objects -------------------------------------------------------------------------------

/** A first body to edit: each property's default, when the schema gives one. */
function example(schema) {
  const body = {};
  for (const [name, prop] of Object.entries(schema?.properties ?? {})) {
    if (prop && typeof prop === "object" && "default" in prop) body[name] = prop.default;
  }
  return JSON.stringify(body, null, 2);
}

async function loadObjects() {
  const r = await socket.call("GET", "/_objects");
  const box = $("objects");
  if (r.c !== 200) {
    if (!needsToken(r)) box.replaceChildren(el("p", { textContent: `Objects: ${problemText(r)}` }));
    return;
  }
  box.replaceChildren(...r.d.objects.map(objectView));
}

function objectView(o) {
  const id = `args-${o.name}`;
  const args = el("textarea", { id, rows: 4, spellcheck: false, value: example(o.args_schema) });
  const out = el("p", { className: "error", role: "status" });
  const submit = el("button", { type: "submit", textContent: `Submit ${o.name}` });
  const form = el("form", {}, el("label", { htmlFor: id, textContent: "Arguments (JSON)" }), args, submit, out);
  form.dataset.object = o.name;
  form.onsubmit = async (e) => {
    e.preventDefault();
    out.textContent = "";
    let body;
    try {
      body = JSON.parse(args.value || "{}");
    } catch (err) {
      out.textContent = `Not JSON: ${err.message}`;
      args.focus();
      return;
    }
    const r = await socket.call("POST", `/${o.name}/`, { d: body });
    if (r.c !== 201 && r.c !== 200) {
      if (!needsToken(r)) out.textContent = problemText(r);
      return;
    }
    const run = { created: new Date().toISOString(), ended: null, ...r.d };
    if (!page.runs.has(run.id)) page.runs = new Map([[run.id, run], ...page.runs]);
    select(page.runs.get(run.id));
  };
  const summary = el("summary", {}, o.name, el("span", { className: "kind", textContent: o.kind ?? "" }));
  const schema = el("pre", { textContent: JSON.stringify(o.args_schema ?? {}, null, 2) });
  schema.setAttribute("aria-label", `Argument schema of ${o.name}`);
  return el("details", {}, summary, el("p", { textContent: o.description ?? "" }), schema, form);
}

// ---- nodes ---------------------------------------------------------------------------------

async function loadNodes() {
  clearTimeout(page.nodesTimer);
  const r = await socket.call("GET", "/_nodes").catch(() => null);
  if (!r) return;
  const note = $("nodes-note");
  if (r.c !== 200) {
    note.textContent = r.c === 403 || r.c === 401 ? "Listing nodes needs the admin scope." : problemText(r);
  } else {
    note.textContent = r.d.nodes.length ? "" : "No worker node is registered.";
    const topics = (subs) => subs.map((s) => s.topic).join(", ");
    $("nodes").tBodies[0].replaceChildren(
      ...r.d.nodes.map((n) =>
        el(
          "tr",
          {},
          el("td", { textContent: n.id.slice(0, 8), title: n.id }),
          el("td", { textContent: `${n.host}:${n.port}` }),
          el("td", { textContent: n.status, className: `status-${n.status}`, title: n.dirty ?? n.health?.last?.at(-1)?.detail ?? "" }),
          el("td", { textContent: topics(n.services) }),
          el("td", { textContent: topics(n.slots) }),
        ),
      ),
    );
  }
  page.nodesTimer = setTimeout(loadNodes, NODES_EVERY_MS);
}

// ---- forms ---------------------------------------------------------------------------------

$("token-form").onsubmit = (e) => {
  e.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  socket.reopen();
};
$("token-forget").onclick = () => {
  sessionStorage.removeItem(TOKEN_KEY);
  socket.reopen();
};
$("runs-filter").onsubmit = (e) => {
  e.preventDefault();
  // A new socket drops the old feed subscription with it.
  socket.reopen();
};
$("runs-more").onclick = () => moreRuns();

socket.open();
