package longrun_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// serverURL is the base URL of the `longrun serve` the tests share (demo objects, default
// settings, as spec/conformance/README.md asks).
var serverURL string

// TestMain starts the server: the binary named by LONGRUN_BIN (cargo xtask sets it), else the
// workspace's debug build (`cargo build -p longrun-cli`).
func TestMain(m *testing.M) {
	bin := os.Getenv("LONGRUN_BIN")
	if bin == "" {
		bin = "../target/debug/longrun"
	}
	cmd := exec.Command(bin, "serve", "--store", "memory", "--listen", "127.0.0.1:0")
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
	for lines.Scan() {
		if url, ok := strings.CutPrefix(lines.Text(), "longrun listening on "); ok {
			serverURL = strings.TrimSpace(url)
			break
		}
	}
	if serverURL == "" {
		fmt.Fprintln(os.Stderr, "the longrun server did not say where it listens")
		_ = cmd.Process.Kill()
		os.Exit(1)
	}
	go func() { // keep its stdout drained
		for lines.Scan() {
		}
	}()
	code := m.Run()
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	os.Exit(code)
}
