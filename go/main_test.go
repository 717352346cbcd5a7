package longrun_test

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// serverURL is the base URL of the `longrun serve` the tests share (demo objects, default
// settings, as spec/conformance/README.md asks).
var serverURL string

// unixURL is the base URL (unix:///…) of a third server, on a unix socket (spec §20.2).
var unixURL string

// hookURL is a server that sends response hooks, signed with hookSecret, and may send them to
// loopback receivers.
var hookURL string

const hookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// authURL is a second server, with tenants (`--auth`): one tenant whose token authToken may
// do everything and readToken only read, and a second tenant with otherToken.
var authURL string

const (
	authToken  = "lrt_go_test_all"
	readToken  = "lrt_go_test_read"
	otherToken = "lrt_go_test_other"
)

// authFile is the auth file of authURL's server, as `longrun token new` would have it.
func authFile() string {
	hash := func(token string) string { return fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(token))) }
	return fmt.Sprintf(`[[tenant]]
name = "go"
[[tenant.token]]
hash = %q
scopes = ["submit", "read", "cancel"]
[[tenant.token]]
hash = %q
scopes = ["read"]
[[tenant]]
name = "other"
[[tenant.token]]
hash = %q
scopes = ["submit", "read", "cancel"]
`, hash(authToken), hash(readToken), hash(otherToken))
}

// TestMain starts the servers: the binary named by LONGRUN_BIN (cargo xtask sets it), else the
// workspace's debug build (`cargo build -p longrun-cli`).
// binary is the `longrun` binary the servers run, for tests that need one of their own.
var binary string

func TestMain(m *testing.M) {
	bin := os.Getenv("LONGRUN_BIN")
	if bin == "" {
		bin = "../target/debug/longrun"
	}
	binary = bin
	dir, err := os.MkdirTemp("", "longrun-go-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	auth := filepath.Join(dir, "tenants.toml")
	if err := os.WriteFile(auth, []byte(authFile()), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var open, tenants, unix, hooks *exec.Cmd
	serverURL, open = startServer(bin)
	authURL, tenants = startServer(bin, "--auth", auth)
	unixURL, unix = startServerOn(bin, "unix:"+filepath.Join(dir, "longrun.sock"))
	hookURL, hooks = startServer(bin, "--hook-secret", hookSecret, "--hook-allow", "127.0.0.1")
	code := m.Run()
	for _, cmd := range []*exec.Cmd{open, tenants, unix, hooks} {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// startServer starts `longrun serve --store memory` with extra flags; its base URL.
func startServer(bin string, extra ...string) (string, *exec.Cmd) {
	return startServerOn(bin, "127.0.0.1:0", extra...)
}

// startServerOn is startServer listening on listen (HOST:PORT or unix:PATH).
func startServerOn(bin, listen string, extra ...string) (string, *exec.Cmd) {
	args := append([]string{"serve", "--store", "memory", "--listen", listen}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot start the longrun server %s: %v\n(build it with `cargo build -p longrun-cli`, or set LONGRUN_BIN)\n", bin, err)
		os.Exit(1)
	}
	lines := bufio.NewScanner(stdout)
	url := ""
	for lines.Scan() {
		if u, ok := strings.CutPrefix(lines.Text(), "longrun listening on "); ok {
			url = strings.TrimSpace(u)
			break
		}
	}
	if url == "" {
		fmt.Fprintln(os.Stderr, "the longrun server did not say where it listens")
		_ = cmd.Process.Kill()
		os.Exit(1)
	}
	go func() { // keep its stdout drained
		for lines.Scan() {
		}
	}()
	return url, cmd
}
