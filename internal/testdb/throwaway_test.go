package testdb

import (
	"context"
	"testing"
	"time"
)

// TestThrowawayRestart: a throwaway server can be crashed, stopped and
// started again on the same port, keeping its data.
func TestThrowawayRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a mariadbd: skipped with -short")
	}
	t.Parallel()
	start := time.Now()
	s := ThrowawayFor(t)
	t.Logf("started in %v", time.Since(start))
	db, cfg := openThrowaway(t, s)
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, "CREATE TABLE t (v INT) ENGINE=InnoDB"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	pid := s.PID()
	for _, halt := range []struct {
		name string
		fn   func() error
	}{{"Kill", s.Kill}, {"Stop", s.Stop}} {
		if err := halt.fn(); err != nil {
			t.Fatalf("%s: %v", halt.name, err)
		}
		if s.PID() != 0 {
			t.Errorf("PID after %s = %d", halt.name, s.PID())
		}
		if err := ping(cfg); err == nil {
			t.Fatalf("the server answers after %s", halt.name)
		}
		if err := halt.fn(); err == nil {
			t.Errorf("%s of a stopped server: no error", halt.name)
		}
		restart := time.Now()
		if err := s.Start(); err != nil {
			t.Fatalf("Start after %s: %v", halt.name, err)
		}
		t.Logf("restarted after %s in %v", halt.name, time.Since(restart))
		if s.PID() == pid || s.PID() == 0 {
			t.Errorf("PID %d after restart (was %d)", s.PID(), pid)
		}
		if err := s.Start(); err == nil {
			t.Error("Start of a running server: no error")
		}
		var v int
		if err := db.QueryRowContext(ctx, "SELECT v FROM t").Scan(&v); err != nil || v != 1 {
			t.Fatalf("after %s and restart: %d, %v", halt.name, v, err)
		}
	}
}
