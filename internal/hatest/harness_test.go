package hatest_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/txlock/txlock/internal/hatest"
)

// fatalRecorder is a testing.TB whose Fatal and Fatalf record the message
// and end the goroutine, as the real ones do, so that a test can check
// that a harness step fails, and how.
type fatalRecorder struct {
	testing.TB
	mu     sync.Mutex
	failed string
}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.failed = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}

func (f *fatalRecorder) Fatal(args ...any) { f.Fatalf("%s", fmt.Sprint(args...)) }

func (f *fatalRecorder) message() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failed
}

// runStep runs step with a fatalRecorder in a goroutine of its own and
// returns the message it failed with ("" if it returned).
func runStep(t *testing.T, step func(tb testing.TB)) string {
	t.Helper()
	rec := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		step(rec)
	}()
	<-done
	return rec.message()
}

// TestHarnessRefusesUnappliedRelayLog: the careful promotion applies the
// replica's relay log first, and fails, naming the step and the positions,
// when it cannot (here the replica's SQL thread waits behind a row lock
// taken on the replica); it never promotes anyway. A regression test: the
// harness used to log "promoting anyway", and the failure showed up later
// and elsewhere.
func TestHarnessRefusesUnappliedRelayLog(t *testing.T) {
	hatest.SkipUnlessEnabled(t)
	p := hatest.StartPair(t, false)
	p.Primary.Exec(t,
		"CREATE TABLE test.ha_block (id INT PRIMARY KEY, v INT NOT NULL)",
		"INSERT INTO test.ha_block VALUES (1, 0)",
	)
	hatest.CatchUp(t, p.Primary, p.Replica, hatest.Ceiling)

	// A transaction on the replica holds the row: the SQL thread's update
	// of it waits (up to innodb_lock_wait_timeout, then retries).
	ctx := context.Background()
	blocker, err := p.Replica.Admin().BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = blocker.Rollback() }()
	if _, err := blocker.ExecContext(ctx, "SELECT v FROM test.ha_block WHERE id = 1 FOR UPDATE"); err != nil {
		t.Fatal(err)
	}
	p.Primary.Exec(t, "UPDATE test.ha_block SET v = 1 WHERE id = 1")
	// Received, not applied: Gtid_IO_Pos reaches the primary's position.
	want, err := p.Primary.QueryString(ctx, "SELECT @@gtid_binlog_pos")
	if err != nil {
		t.Fatal(err)
	}
	waitIOPos(t, p.Replica, want)

	msg := runStep(t, func(tb testing.TB) { hatest.PromoteAfterRelayLog(tb, p.Replica, 3*time.Second) })
	t.Logf("PromoteAfterRelayLog failed with: %s", msg)
	if msg == "" {
		t.Fatal("PromoteAfterRelayLog returned although the relay log could not be applied")
	}
	for _, sub := range []string{"promoting replica", "applying its relay log", want, "gtid_current_pos"} {
		if !strings.Contains(msg, sub) {
			t.Errorf("the failure does not name %q: %s", sub, msg)
		}
	}
	ro, err := p.Replica.QueryString(ctx, "SELECT @@global.read_only")
	if err != nil {
		t.Fatal(err)
	}
	if ro != "1" {
		t.Errorf("read_only = %s on the replica: it was promoted although its relay log was not applied", ro)
	}
}

// TestHarnessCatchUpStoppedReplica: waiting for a replica whose SQL thread
// is stopped fails at once, naming the step and the stopped thread, rather
// than after the ceiling.
func TestHarnessCatchUpStoppedReplica(t *testing.T) {
	hatest.SkipUnlessEnabled(t)
	p := hatest.StartPair(t, false)
	p.Replica.Exec(t, "STOP SLAVE SQL_THREAD")
	p.Primary.Exec(t, "CREATE TABLE test.ha_stopped (id INT PRIMARY KEY)")
	start := time.Now()
	msg := runStep(t, func(tb testing.TB) { hatest.CatchUp(tb, p.Primary, p.Replica, hatest.Ceiling) })
	t.Logf("CatchUp failed after %v with: %s", time.Since(start).Round(time.Millisecond), msg)
	for _, sub := range []string{"replica catching up with primary", "SQL thread stopped", `SQL thread "No"`} {
		if !strings.Contains(msg, sub) {
			t.Errorf("the failure does not name %q: %q", sub, msg)
		}
	}
}

// waitIOPos waits until r has received (Gtid_IO_Pos) the GTID position
// pos.
func waitIOPos(t *testing.T, r *hatest.Node, pos string) {
	t.Helper()
	deadline := time.Now().Add(hatest.Ceiling)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		got := hatest.SlaveStatus(ctx, r)["Gtid_IO_Pos"]
		cancel()
		if got == pos {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: Gtid_IO_Pos %q after %v, want %q", r.Name, got, hatest.Ceiling, pos)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
