package longrun_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sort"
	"testing"

	longrun "example.invalid/longrun/go"
)

// A server of this test's own, so the run list holds only its runs.
func ownServer(t *testing.T) string {
	t.Helper()
	url, cmd := startServer(binary)
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return url
}

func TestListRunsPagesNewestFirstAndRunsWalksEveryPage(t *testing.T) {
	ctx := context.Background()
	c := newClient(t, ownServer(t))
	var echoes []longrun.Run
	for i := range 5 {
		run, err := c.Submit(ctx, "echo", map[string]int{"i": i})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Wait(ctx, run); err != nil {
			t.Fatal(err)
		}
		echoes = append(echoes, run)
	}
	sleeper, err := c.Submit(ctx, "sleep", map[string]int{"ms": 3_600_000})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Cancel(ctx, sleeper)
	reversed := slices.Clone(echoes)
	slices.Reverse(reversed)

	ids := func(runs []longrun.ListedRun) (out []string) {
		for _, r := range runs {
			out = append(out, r.Run.ID)
		}
		return out
	}
	want := func(runs ...longrun.Run) (out []string) {
		for _, r := range runs {
			out = append(out, r.ID)
		}
		return out
	}

	page, err := c.ListRuns(ctx, longrun.ListRunsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(page.Runs); !slices.Equal(got, want(append([]longrun.Run{sleeper}, reversed...)...)) || page.NextPageToken != "" {
		t.Fatalf("every run, newest first: %v (next %q)", got, page.NextPageToken)
	}
	first := page.Runs[len(page.Runs)-1]
	if first.Run != echoes[0] || first.State != longrun.StateSuccess || first.Tenant != "" {
		t.Fatalf("the first run: %+v", first)
	}
	if first.Created.IsZero() || first.Ended.Before(first.Created) {
		t.Fatalf("created %v, ended %v", first.Created, first.Ended)
	}

	active, err := c.ListRuns(ctx, longrun.ListRunsOptions{State: "active"})
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(active.Runs); !slices.Equal(got, want(sleeper)) || !active.Runs[0].Ended.IsZero() {
		t.Fatalf("active runs: %+v", active.Runs)
	}

	two, err := c.ListRuns(ctx, longrun.ListRunsOptions{Object: "echo", Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	next, err := c.ListRuns(ctx, longrun.ListRunsOptions{Object: "echo", Limit: 2, PageToken: two.NextPageToken})
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(next.Runs); len(two.Runs) != 2 || !slices.Equal(got, want(echoes[2], echoes[1])) {
		t.Fatalf("the second page of two: %v", got)
	}

	var walked []string
	for r, err := range c.Runs(ctx, longrun.ListRunsOptions{Object: "echo", Limit: 2}) {
		if err != nil {
			t.Fatal(err)
		}
		walked = append(walked, r.Run.ID)
	}
	if !slices.Equal(walked, want(reversed...)) {
		t.Fatalf("each once, in order, over three pages: %v", walked)
	}
}

func TestABadRunsQueryIsInvalidArgument(t *testing.T) {
	c := newClient(t, serverURL)
	for _, opts := range []longrun.ListRunsOptions{{State: "sleeping"}, {Limit: -1}, {PageToken: "not-a-token"}} {
		if _, err := c.ListRuns(context.Background(), opts); !errors.Is(err, longrun.ErrInvalidArgument) {
			t.Errorf("%+v: %v", opts, err)
		}
	}
}

func TestObjectsIsTheCatalogueAndObjectOneEntry(t *testing.T) {
	ctx := context.Background()
	c := newClient(t, serverURL)
	objects, err := c.Objects(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, o := range objects {
		names = append(names, o.Name)
	}
	if !sort.StringsAreSorted(names) || !slices.Contains(names, "count") || !slices.Contains(names, "bytes") {
		t.Fatalf("the catalogue: %v", names)
	}
	count, err := c.Object(ctx, "count")
	if err != nil {
		t.Fatal(err)
	}
	var schema struct {
		Type       string                     `json:"type"`
		Properties map[string]json.RawMessage `json:"properties"`
	}
	if err := json.Unmarshal(count.ArgsSchema, &schema); err != nil || schema.Type != "object" || schema.Properties["n"] == nil {
		t.Fatalf("count's schema: %s (%v)", count.ArgsSchema, err)
	}
	if count.Kind != "builtin" || count.Stream {
		t.Fatalf("count: %+v", count)
	}
	if bytes, err := c.Object(ctx, "bytes"); err != nil || !bytes.Stream {
		t.Fatalf("bytes: %+v %v", bytes, err)
	}
	if _, err := c.Object(ctx, "no-such-object"); !errors.Is(err, longrun.ErrNotFound) {
		t.Fatalf("an unknown object: %v", err)
	}
	if _, err := c.Object(ctx, ""); !errors.Is(err, longrun.ErrInvalidArgument) {
		t.Fatalf("no name: %v", err)
	}
}
