module longrun.dev/examples/worker-go

// The standard library only: no requirements, so no go.sum.
go 1.22
