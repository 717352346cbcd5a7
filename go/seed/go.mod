// The seed's own client and server (factorysh/go-longrun v0.1.0, from the Go module proxy),
// run against the reference server by `cargo xtask test` and measured beside it by
// `cargo xtask bench server`. A module of its own so the SDK module (one level up) does not
// depend on it. The checksum database has no entry for v0.1.0: go.sum pins it, and xtask sets
// GONOSUMDB for that module.
module example.invalid/longrun/go/seed

go 1.23

require (
	github.com/factorysh/go-longrun v0.1.0
	github.com/sirupsen/logrus v1.8.1
)

require (
	github.com/google/uuid v1.3.0 // indirect
	golang.org/x/sys v0.0.0-20200302150141-5c8b2ff67527 // indirect
)
