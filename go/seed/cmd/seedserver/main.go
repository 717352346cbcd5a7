// Command seedserver is the seed's own server (factorysh/go-longrun v0.1.0's rest, run and sse
// packages, unchanged) with the two objects `cargo xtask bench server` measures: `echo` and
// `count`. It prints its address on stdout, then runs until stdin closes (the benchmark's
// end). Only the objects are ours; every byte on the wire is the seed's.
package main

import (
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/factorysh/go-longrun/rest"
	"github.com/factorysh/go-longrun/run"
	log "github.com/sirupsen/logrus"
)

// followed holds, per run id, a channel closed once its first SSE follower has subscribed.
// The seed deadlocks when a follower subscribes to a log of more than 100 events (its
// per-subscriber channel holds 100 and is filled under the log's lock), so `count` waits for
// its follower before it emits; after that the seed's channel backpressure paces it.
var followed sync.Map

func gate(id string) chan struct{} {
	ch, _ := followed.LoadOrStore(id, make(chan struct{}))
	return ch.(chan struct{})
}

// flushSignal closes the run's gate at the seed handler's first Flush, which it calls right
// after subscribing.
type flushSignal struct {
	http.ResponseWriter
	once sync.Once
	ch   chan struct{}
}

func (f *flushSignal) Flush() {
	f.once.Do(func() { close(f.ch) })
	f.ResponseWriter.(http.Flusher).Flush()
}

func main() {
	// The seed logs every request through logrus at info level; the benchmark measures the
	// protocol, not a terminal.
	log.SetLevel(log.WarnLevel)
	log.SetOutput(io.Discard)
	runs := run.New(time.Minute)
	mux := http.NewServeMux()
	echo := rest.NewHandler(runs, "/echo", func(r *run.Run, _ *http.Request, arg map[string]interface{}) {
		r.Success(arg)
	})
	count := rest.NewHandler(runs, "/count", func(r *run.Run, _ *http.Request, arg map[string]interface{}) {
		n, _ := arg["n"].(float64)
		select {
		case <-gate(r.Id().String()):
		case <-time.After(10 * time.Second): // nobody followed: do not hold the goroutine forever
		}
		for i := 1; i <= int(n); i++ {
			r.Run(map[string]interface{}{
				"i": i, "n": int(n), "progress": float64(i) / n, "message": fmt.Sprintf("%d/%d", i, int(n)),
			})
		}
		r.Success(map[string]interface{}{"n": int(n)})
		followed.Delete(r.Id().String())
	})
	mux.Handle("/echo/", echo)
	mux.Handle("/count/", http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodGet {
			id := strings.TrimPrefix(req.URL.Path, "/count/")
			w = &flushSignal{ResponseWriter: w, ch: gate(id)}
		}
		count.ServeHTTP(w, req)
	}))
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(listener.Addr().String())
	// The seed prints every Accept header it parses to stdout (fmt.Println in rest.go).
	if null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0); err == nil {
		os.Stdout = null
	}
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	// The seed ends every stream by a nil dereference that net/http recovers and logs.
	server := &http.Server{Handler: mux, ErrorLog: stdlog.New(io.Discard, "", 0)}
	_ = server.Serve(listener)
}
