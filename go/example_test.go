package longrun_test

import (
	"context"
	"errors"
	"fmt"

	longrun "example.invalid/longrun/go"
)

// The README's quickstart (compiled by `go vet` and `go test`; it needs a server to run).
func Example() {
	ctx := context.Background()
	c, err := longrun.NewClient("http://127.0.0.1:8080", longrun.WithToken("…"))
	if err != nil {
		panic(err)
	}
	defer c.Close()

	run, err := c.Submit(ctx, "count", map[string]any{"n": 3})
	if err != nil {
		panic(err)
	}
	for ev, err := range c.Follow(ctx, run) {
		if err != nil {
			panic(err)
		}
		fmt.Println(ev.ID, ev.State, string(ev.Value))
	}
	again, _ := longrun.RunFromURL(run.URL) // the portable resume token
	for ev, err := range c.FollowFrom(ctx, again, 2) {
		fmt.Println(ev, err)
	}
	v, err := c.Wait(ctx, run)
	var failed *longrun.RunFailedError
	switch {
	case errors.As(err, &failed):
		fmt.Println("failed:", string(failed.Value))
	case errors.Is(err, longrun.ErrCanceled):
		fmt.Println("canceled")
	case err != nil:
		fmt.Println(err)
	default:
		fmt.Println(string(v))
	}
}
