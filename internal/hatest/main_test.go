package hatest_test

import (
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/txlock/txlock/internal/hatest"
)

// skipNotice is what the package says when its tests were not asked for.
const skipNotice = "internal/hatest: SKIPPED, the HA tests did not run (opt-in: they start throwaway MariaDB replication and Galera topologies). Run them with `make test-ha`, or TXLOCK_HA=1 go test -race -count=1 -timeout 20m -v ./internal/hatest/..."

// TestMain runs the HA tests only when they were asked for (TXLOCK_HA=1).
// Otherwise it runs none and says so: on its own output (shown by go test
// -v, and when go test runs in the package's directory), followed by the
// line that makes go test mark the package's summary "[no tests to run]";
// and, since go test in package-list mode (`go test ./...`, `make test`)
// prints nothing but the summary line of a passing package, once more on
// the go command's standard error.
func TestMain(m *testing.M) {
	flag.Parse()
	if hatest.Enabled() || listing() {
		os.Exit(m.Run())
	}
	fmt.Println(skipNotice)
	fmt.Println("testing: warning: no tests to run")
	if !testing.Verbose() {
		tellGoCommand(skipNotice)
	}
	os.Exit(0)
}

// listing reports whether the binary was asked to list its tests
// (go test -list), which must work without TXLOCK_HA.
func listing() bool {
	f := flag.Lookup("test.list")
	return f != nil && f.Value.String() != ""
}

// tellGoCommand writes msg on the standard error of the parent process
// when that is the go command and its standard error is a terminal or a
// pipe (never a regular file: writing there through a second open file
// could overwrite what the go command writes). Best effort, Linux only:
// nothing happens where /proc is missing.
func tellGoCommand(msg string) {
	ppid := os.Getppid()
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", ppid))
	if err != nil || filepath.Base(exe) != "go" {
		return
	}
	path := fmt.Sprintf("/proc/%d/fd/2", ppid)
	st, err := os.Stat(path)
	if err != nil || st.Mode()&(fs.ModeNamedPipe|fs.ModeCharDevice) == 0 {
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintln(f, msg)
}
