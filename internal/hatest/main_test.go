package hatest_test

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/txlock/txlock/internal/hatest"
)

// skipNotice is what the package says when its tests were not asked for.
const skipNotice = "internal/hatest: SKIPPED, the HA tests did not run (opt-in: they start throwaway MariaDB replication and Galera topologies). Run them with `make test-ha`, or TXLOCK_HA=1 go test -race -count=1 -timeout 20m -v ./internal/hatest/..."

// TestMain runs the HA tests only when they were asked for (TXLOCK_HA=1).
// Otherwise it runs none and says so on its output (shown by go test -v),
// followed by the line that makes go test mark the package's summary
// "[no tests to run]". `make test` prints the notice itself after the
// run, since go test in package-list mode shows only the summary line.
func TestMain(m *testing.M) {
	flag.Parse()
	if hatest.Enabled() || listing() {
		os.Exit(m.Run())
	}
	fmt.Println(skipNotice)
	fmt.Println("testing: warning: no tests to run")
	os.Exit(0)
}

// listing reports whether the binary was asked to list its tests
// (go test -list), which must work without TXLOCK_HA.
func listing() bool {
	f := flag.Lookup("test.list")
	return f != nil && f.Value.String() != ""
}
