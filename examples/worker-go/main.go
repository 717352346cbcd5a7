// Command worker-go is a longrun worker node, standard library only (spec/PROTOCOL.md §25): the
// same worker as examples/worker-python/worker.py, in Go with net/http.
//
// It serves HTTP on a port (0: any free one), prints `listening on PORT` on stdout, registers
// its services and slots with a longrun server (-server URL, or LONGRUN_SERVER / LONGRUN_URL,
// -token or LONGRUN_TOKEN when the server has tenants) and prints `registered NODE_ID`.
//
// Services (each an object of the server once registered):
//   - `<prefix>upper`  {"text": "..."} → the text in upper case; {"fail": true} → HTTP 500.
//   - `<prefix>slow`   {"steps": N} → reports N progress events through the callback, then
//     {"steps": N}; {"hang": true} reports one event and then waits until the server closes
//     the connection (a timeout or a cancel).
//
// Slots (-slot PATTERN or -slot PATTERN@GROUP, repeatable; default one ungrouped slot
// `notes.*`), all at the path /slot: the signals the server delivers there (POST
// /_signals/{topic} on the server) are recorded and answered 200 {}.
//
// Other paths:
//   - the health path (-health PATH, default /health, also registered as `health_check`)
//     answers 200 while the worker is healthy; POST /_sick and POST /_well switch that.
//   - GET /_seen lists the run ids (`sender`) this worker was handed, in order.
//   - GET /_closed/<sender> waits (at most 30 s) until the server closed the connection of
//     that run, then answers 200 (504 if it did not).
//   - GET /_signals lists the signals delivered to the slots, {"signals": [{"topic",
//     "sender", "data"}, ...]} in order; GET /_signals?count=N first waits (at most 30 s)
//     until at least N are recorded (504 with the list if they are not).
//   - GET /_pings (?count=N likewise) lists the Longrun-Replica header of each health ping,
//     {"pings": [...]} (null when the server sent none): which replicas check health.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// waitLimit bounds the test helpers that wait (/_closed/…, /_signals?count=N).
const waitLimit = 30 * time.Second

// maxPings is how many health pings GET /_pings remembers (the latest ones).
const maxPings = 1000

// signal is one delivery to a slot, as /_signals lists it.
type signal struct {
	Topic  any `json:"topic"`
	Sender any `json:"sender"`
	Data   any `json:"data"`
}

// state is what the worker saw; changed is closed (and replaced) at every change, so that
// waiters wake up and look again.
type state struct {
	mu      sync.Mutex
	seen    []any
	closed  map[string]bool
	healthy bool
	signals []signal
	pings   []any
	changed chan struct{}
}

func newState() *state {
	return &state{closed: map[string]bool{}, healthy: true, changed: make(chan struct{})}
}

// update runs f under the lock and wakes every waiter.
func (s *state) update(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
	close(s.changed)
	s.changed = make(chan struct{})
}

// waitFor waits until ready (called under the lock) is true, at most waitLimit or until done
// is closed; it returns whether ready became true.
func (s *state) waitFor(done <-chan struct{}, ready func() bool) bool {
	timer := time.NewTimer(waitLimit)
	defer timer.Stop()
	for {
		s.mu.Lock()
		ok, changed := ready(), s.changed
		s.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-changed:
		case <-timer.C:
			return false
		case <-done:
			return false
		}
	}
}

type worker struct {
	st         *state
	healthPath string
	callbacks  *http.Client
}

func reply(w http.ResponseWriter, status int, value any) {
	body, err := json.Marshal(value)
	if err != nil {
		status, body = http.StatusInternalServerError, []byte(`{"message":"cannot encode the answer"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}

func (wk *worker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		wk.get(w, r)
	case http.MethodPost:
		wk.post(w, r)
	default:
		w.Header().Set("Allow", "GET, POST")
		reply(w, http.StatusMethodNotAllowed, map[string]string{"message": "only GET and POST"})
	}
}

func (wk *worker) get(w http.ResponseWriter, r *http.Request) {
	st, path := wk.st, r.URL.Path
	switch {
	case path == wk.healthPath:
		var replica any
		if v, ok := r.Header["Longrun-Replica"]; ok && len(v) > 0 {
			replica = v[0]
		}
		var healthy bool
		st.update(func() {
			healthy = st.healthy
			st.pings = append(st.pings, replica)
			if len(st.pings) > maxPings {
				st.pings = append([]any{}, st.pings[len(st.pings)-maxPings:]...)
			}
		})
		if healthy {
			reply(w, http.StatusOK, map[string]string{"status": "ok"})
		} else {
			reply(w, http.StatusServiceUnavailable, map[string]string{"status": "sick"})
		}
	case path == "/_seen":
		st.mu.Lock()
		seen := append([]any{}, st.seen...)
		st.mu.Unlock()
		reply(w, http.StatusOK, map[string]any{"seen": seen})
	case strings.HasPrefix(path, "/_closed/"):
		sender := strings.TrimPrefix(path, "/_closed/")
		closed := st.waitFor(r.Context().Done(), func() bool { return st.closed[sender] })
		reply(w, statusIf(closed, http.StatusGatewayTimeout), map[string]bool{"closed": closed})
	case path == "/_signals":
		listed(w, r, st, "signals", func() []any {
			list := make([]any, len(st.signals))
			for i, s := range st.signals {
				list[i] = s
			}
			return list
		})
	case path == "/_pings":
		listed(w, r, st, "pings", func() []any { return append([]any{}, st.pings...) })
	default:
		reply(w, http.StatusNotFound, map[string]string{"message": "no such path"})
	}
}

// listed answers {key: list()} once list() (called under the lock) holds at least ?count=N
// items (default 0), waiting at most waitLimit: 200, or 504 with the list when it ran out.
func listed(w http.ResponseWriter, r *http.Request, st *state, key string, list func() []any) {
	count := 0
	if q := r.URL.Query().Get("count"); q != "" {
		n, err := strconv.Atoi(q)
		if err != nil {
			reply(w, http.StatusBadRequest, map[string]string{"message": "count is not a number"})
			return
		}
		count = n
	}
	var items []any
	enough := st.waitFor(r.Context().Done(), func() bool {
		items = list()
		return len(items) >= count
	})
	reply(w, statusIf(enough, http.StatusGatewayTimeout), map[string]any{key: items})
}

// statusIf is 200 when ok, else otherwise.
func statusIf(ok bool, otherwise int) int {
	if ok {
		return http.StatusOK
	}
	return otherwise
}

func (wk *worker) post(w http.ResponseWriter, r *http.Request) {
	st := wk.st
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		reply(w, http.StatusBadRequest, map[string]string{"message": "cannot read the body: " + err.Error()})
		return
	}
	if r.URL.Path == "/_sick" || r.URL.Path == "/_well" {
		var healthy bool
		st.update(func() { st.healthy = r.URL.Path == "/_well"; healthy = st.healthy })
		reply(w, http.StatusOK, map[string]bool{"healthy": healthy})
		return
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		raw = []byte("{}")
	}
	var body map[string]json.RawMessage
	if err := json.Unmarshal(raw, &body); err != nil {
		if json.Valid(raw) {
			reply(w, http.StatusBadRequest, map[string]string{"message": "the body is not a JSON object"})
		} else {
			reply(w, http.StatusBadRequest, map[string]string{"message": "the body is not JSON"})
		}
		return
	}
	var topic, sender, data any
	json.Unmarshal(body["topic"], &topic)
	json.Unmarshal(body["sender"], &sender)
	json.Unmarshal(body["data"], &data)
	if r.URL.Path == "/slot" {
		st.update(func() { st.signals = append(st.signals, signal{topic, sender, data}) })
		reply(w, http.StatusOK, map[string]any{})
		return
	}
	args, _ := data.(map[string]any) // like the Python worker: data that is no object is {}
	if args == nil {
		args = map[string]any{}
	}
	st.update(func() { st.seen = append(st.seen, sender) })
	switch r.URL.Path {
	case "/upper":
		if truthy(args["fail"]) {
			reply(w, http.StatusInternalServerError, map[string]any{"message": "asked to fail", "input": args})
			return
		}
		reply(w, http.StatusOK, map[string]string{"text": strings.ToUpper(text(args["text"]))})
	case "/slow":
		wk.slow(w, r, sender, args)
	default:
		reply(w, http.StatusNotFound, map[string]string{"message": "no such service path"})
	}
}

func (wk *worker) slow(w http.ResponseWriter, r *http.Request, sender any, args map[string]any) {
	steps := 3
	if v, ok := args["steps"]; ok {
		n, ok := number(v)
		if !ok {
			reply(w, http.StatusBadRequest, map[string]string{"message": "steps is not a number"})
			return
		}
		steps = n
	}
	callback := r.Header.Get("Longrun-Callback")
	progress := func(value any) bool {
		if callback == "" {
			return true
		}
		if err := wk.postJSON(callback, value); err != nil {
			reply(w, http.StatusBadGateway, map[string]string{"message": "the progress callback failed: " + err.Error()})
			return false
		}
		return true
	}
	for i := 1; i <= steps; i++ {
		if !progress(map[string]any{"progress": float64(i) / float64(max(steps, 1)), "message": fmt.Sprintf("step %d", i)}) {
			return
		}
	}
	if truthy(args["hang"]) {
		if !progress(map[string]string{"message": "hanging"}) {
			return
		}
		// net/http cancels the request's context when the server closes the connection.
		<-r.Context().Done()
		key, _ := sender.(string)
		wk.st.update(func() { wk.st.closed[key] = true })
		return
	}
	reply(w, http.StatusOK, map[string]int{"steps": steps})
}

// postJSON POSTs value to a progress callback; anything but a 2xx is an error.
func (wk *worker) postJSON(url string, value any) error {
	body, _ := json.Marshal(value)
	res, err := wk.callbacks.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer res.Body.Close()
	answer, _ := io.ReadAll(res.Body)
	if res.StatusCode/100 != 2 {
		return fmt.Errorf("HTTP %d %s", res.StatusCode, answer)
	}
	return nil
}

// truthy is Python's truth of a JSON value.
func truthy(v any) bool {
	switch v := v.(type) {
	case nil:
		return false
	case bool:
		return v
	case float64:
		return v != 0
	case string:
		return v != ""
	case []any:
		return len(v) > 0
	case map[string]any:
		return len(v) > 0
	}
	return true
}

// text is Python's str() of a JSON text argument: a string as is, missing as "", any other
// value as its JSON.
func text(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// number is Python's int() of a JSON value: a number (truncated) or a string of digits.
func number(v any) (int, bool) {
	switch v := v.(type) {
	case float64:
		return int(v), true
	case string:
		n, err := strconv.Atoi(strings.TrimSpace(v))
		return n, err == nil
	case bool:
		if v {
			return 1, true
		}
		return 0, true
	}
	return 0, false
}

// slots is the repeatable -slot flag.
type slots []string

func (s *slots) String() string     { return strings.Join(*s, ",") }
func (s *slots) Set(v string) error { *s = append(*s, v); return nil }

type entry struct {
	Topic   string  `json:"topic"`
	Group   string  `json:"group,omitempty"`
	Path    string  `json:"path"`
	Timeout float64 `json:"timeout"`
}

type registration struct {
	Host        string  `json:"host"`
	Port        int     `json:"port"`
	HealthCheck string  `json:"health_check"`
	Services    []entry `json:"services"`
	Slots       []entry `json:"slots"`
	Concurrency int     `json:"concurrency,omitempty"`
}

// slot is the registration of -slot PATTERN or -slot PATTERN@GROUP.
func slot(spec string, timeout float64) entry {
	topic, group, _ := strings.Cut(spec, "@")
	return entry{Topic: topic, Group: group, Path: "/slot", Timeout: timeout}
}

func env(names ...string) string {
	for _, n := range names {
		if v := os.Getenv(n); v != "" {
			return v
		}
	}
	return ""
}

func main() {
	defaultServer := env("LONGRUN_SERVER", "LONGRUN_URL")
	if defaultServer == "" {
		defaultServer = "http://127.0.0.1:8080"
	}
	server := flag.String("server", defaultServer, "the longrun server (or LONGRUN_SERVER, LONGRUN_URL)")
	token := flag.String("token", os.Getenv("LONGRUN_TOKEN"), "bearer token of the registration (or LONGRUN_TOKEN)")
	defaultPort := 0
	if v := os.Getenv("WORKER_PORT"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			fmt.Fprintf(os.Stderr, "WORKER_PORT is not a number: %q\n", v)
			os.Exit(2)
		}
		defaultPort = n
	}
	port := flag.Int("port", defaultPort, "the port to listen on, 0: a free one (or WORKER_PORT)")
	host := flag.String("host", "127.0.0.1", "address to listen on and register")
	prefix := flag.String("prefix", "", "prefix of the service topics")
	group := flag.String("group", "workers", "exclusion group of the services")
	timeout := flag.Float64("timeout", 60, "service timeout, seconds")
	concurrency := flag.Int("concurrency", 0, "runs the node holds at once (0: unbounded)")
	var slotSpecs slots
	flag.Var(&slotSpecs, "slot", "a slot topic pattern (* and ?), with its exclusion group (PATTERN[@GROUP]); repeatable (default: notes.*)")
	health := flag.String("health", "/health", "the health path, answered and registered")
	noRegister := flag.Bool("no-register", false, "do not register with the server")
	flag.Parse()

	ln, err := net.Listen("tcp", net.JoinHostPort(*host, strconv.Itoa(*port)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bound := ln.Addr().(*net.TCPAddr).Port
	fmt.Printf("listening on %d\n", bound)
	wk := &worker{st: newState(), healthPath: *health, callbacks: &http.Client{Timeout: 30 * time.Second}}
	go func() {
		err := (&http.Server{Handler: wk, ReadHeaderTimeout: 30 * time.Second}).Serve(ln)
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}()

	if !*noRegister {
		if len(slotSpecs) == 0 {
			slotSpecs = slots{"notes.*"}
		}
		reg := registration{
			Host:        *host,
			Port:        bound,
			HealthCheck: *health,
			Services: []entry{
				{Topic: *prefix + "upper", Group: *group, Path: "/upper", Timeout: *timeout},
				{Topic: *prefix + "slow", Group: *group, Path: "/slow", Timeout: *timeout},
			},
			Concurrency: *concurrency,
		}
		for _, spec := range slotSpecs {
			reg.Slots = append(reg.Slots, slot(spec, *timeout))
		}
		id, err := register(strings.TrimRight(*server, "/")+"/_nodes", reg, *token)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Printf("registered %s\n", id)
	}
	select {}
}

// register POSTs the registration and returns the node id.
func register(url string, reg registration, token string) (string, error) {
	body, _ := json.Marshal(reg)
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return "", fmt.Errorf("registration failed: %w", err)
	}
	defer res.Body.Close()
	answer, _ := io.ReadAll(res.Body)
	if res.StatusCode/100 != 2 {
		return "", fmt.Errorf("registration refused: %d %s", res.StatusCode, answer)
	}
	var node struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(answer, &node); err != nil || node.ID == "" {
		return "", fmt.Errorf("registration answered without an id: %s", answer)
	}
	return node.ID, nil
}
