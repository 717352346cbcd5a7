package longrun

// #include "longrun.h"
import "C"

import (
	"context"
	"encoding/json"
	"iter"
	"time"
)

// ListRunsOptions selects the runs of ListRuns and Runs (GET /_runs). The zero value selects
// every run the client's token sees.
type ListRunsOptions struct {
	// Object keeps only this object's runs ("": every object).
	Object string
	// State keeps only runs in this state, or "active" (queued or running) or "ended".
	State string
	// Limit is the number of runs per page, from 1 (0: the server's default, 50; more than
	// 1000 counts as 1000).
	Limit int
	// PageToken is a previous page's NextPageToken.
	PageToken string
}

// ListedRun is one run of a RunPage.
type ListedRun struct {
	Run     Run
	State   State
	Created time.Time
	// Ended is the zero time while the run goes on.
	Ended time.Time
	// Tenant is the run's tenant on a server with tenants ("" on an open one).
	Tenant string
}

// RunPage is one page of runs, newest first.
type RunPage struct {
	Runs []ListedRun
	// NextPageToken asks for the next page ("" on the last page).
	NextPageToken string
}

// ObjectInfo is one object of the server's catalogue (GET /_objects).
type ObjectInfo struct {
	Name string `json:"name"`
	// Kind is builtin, exec, handler, service or composition (a newer server may add kinds).
	Kind        string `json:"kind"`
	Description string `json:"description"`
	// ArgsSchema is the JSON Schema the server checks a submit's arguments against.
	ArgsSchema json.RawMessage `json:"args_schema"`
	// Stream reports whether the object's runs have a byte stream.
	Stream bool `json:"stream"`
}

// ListRuns returns one page of the runs the client's token sees, newest first. Pages never
// repeat a run; a bad state, limit or page token is an *Error matching ErrInvalidArgument.
func (c *Client) ListRuns(ctx context.Context, opts ListRunsOptions) (RunPage, error) {
	query, err := json.Marshal(struct {
		Object    string `json:"object,omitempty"`
		State     string `json:"state,omitempty"`
		Limit     *int   `json:"limit,omitempty"`
		PageToken string `json:"page_token,omitempty"`
	}{opts.Object, opts.State, limitOf(opts.Limit), opts.PageToken})
	if err != nil {
		return RunPage{}, &Error{Kind: KindInvalidArgument, Message: "invalid argument: " + err.Error()}
	}
	var text []byte
	err = c.call(ctx, nil, func(h *C.longrun_client, _ *C.longrun_run, intr *C.longrun_interrupt, cerr **C.longrun_error) C.longrun_code {
		qp, qn := cbytes(query)
		var buf C.longrun_buf
		code := C.longrun_client_list_runs(h, qp, qn, intr, &buf, cerr)
		if code == C.LONGRUN_CODE_OK {
			text = takeBuf(&buf)
		}
		return code
	})
	if err != nil {
		return RunPage{}, err
	}
	var page struct {
		Runs []struct {
			Object, ID, URL, State, Created string
			Ended, Tenant                   *string
		} `json:"runs"`
		NextPageToken *string `json:"next_page_token"`
	}
	if err := json.Unmarshal(text, &page); err != nil {
		return RunPage{}, &Error{Kind: KindProtocol, Message: "the runs list: " + err.Error()}
	}
	out := RunPage{Runs: make([]ListedRun, 0, len(page.Runs))}
	if page.NextPageToken != nil {
		out.NextPageToken = *page.NextPageToken
	}
	for _, r := range page.Runs {
		listed := ListedRun{Run: Run{Object: r.Object, ID: r.ID, URL: r.URL}, State: State(r.State)}
		if listed.Created, err = time.Parse(time.RFC3339Nano, r.Created); err != nil {
			return RunPage{}, &Error{Kind: KindProtocol, Message: "a listed run's created time: " + err.Error()}
		}
		if r.Ended != nil {
			if listed.Ended, err = time.Parse(time.RFC3339Nano, *r.Ended); err != nil {
				return RunPage{}, &Error{Kind: KindProtocol, Message: "a listed run's ended time: " + err.Error()}
			}
		}
		if r.Tenant != nil {
			listed.Tenant = *r.Tenant
		}
		out.Runs = append(out.Runs, listed)
	}
	return out, nil
}

// limitOf sends a limit the caller set, including a bad one (the server refuses it), and
// none for 0.
func limitOf(limit int) *int {
	if limit == 0 {
		return nil
	}
	return &limit
}

// Runs yields every run opts select, page after page (opts.Limit is the page size); pages
// never repeat a run. An error ends the sequence after it is yielded.
func (c *Client) Runs(ctx context.Context, opts ListRunsOptions) iter.Seq2[ListedRun, error] {
	return func(yield func(ListedRun, error) bool) {
		for {
			page, err := c.ListRuns(ctx, opts)
			if err != nil {
				yield(ListedRun{}, err)
				return
			}
			for _, r := range page.Runs {
				if !yield(r, nil) {
					return
				}
			}
			if page.NextPageToken == "" {
				return
			}
			opts.PageToken = page.NextPageToken
		}
	}
}

// Objects returns the server's objects, sorted by name.
func (c *Client) Objects(ctx context.Context) ([]ObjectInfo, error) {
	var objects []ObjectInfo
	err := c.catalogue(ctx, nil, &objects)
	return objects, err
}

// Object returns one object of the catalogue; an *Error matching ErrNotFound when the server
// has none of this name.
func (c *Client) Object(ctx context.Context, name string) (ObjectInfo, error) {
	var object ObjectInfo
	if name == "" {
		return object, &Error{Kind: KindInvalidArgument, Message: "invalid argument: an object name is not empty"}
	}
	err := c.catalogue(ctx, &name, &object)
	return object, err
}

func (c *Client) catalogue(ctx context.Context, name *string, into any) error {
	var text []byte
	err := c.call(ctx, nil, func(h *C.longrun_client, _ *C.longrun_run, intr *C.longrun_interrupt, cerr **C.longrun_error) C.longrun_code {
		var np *C.uint8_t
		var nn C.size_t
		if name != nil {
			np, nn = cstr(*name)
		}
		var buf C.longrun_buf
		code := C.longrun_client_objects(h, np, nn, intr, &buf, cerr)
		if code == C.LONGRUN_CODE_OK {
			text = takeBuf(&buf)
		}
		return code
	})
	if err != nil {
		return err
	}
	if err := json.Unmarshal(text, into); err != nil {
		return &Error{Kind: KindProtocol, Message: "the object catalogue: " + err.Error()}
	}
	return nil
}
