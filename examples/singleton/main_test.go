package main

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/txlock/txlock/internal/testdb"
)

// TestMain runs the test binary as a worker when the supervisor starts it
// as one.
func TestMain(m *testing.M) {
	if os.Getenv(envRole) == "worker" {
		os.Exit(workerMain(os.Args[1:], os.Stdout, os.Stderr))
	}
	testdb.Main(m)
}

// TestRun runs three worker processes (this test binary) against the test
// server, ticking much faster than MinInterval: the job never overlaps,
// its committed runs start at least the interval apart in server time
// (run checks both and the counts), turns are skipped as too soon, and
// failed runs, rolled back, do not count.
func TestRun(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t)
	lock := testdb.Table(t, db)
	dsn, err := testdb.DSN()
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfg := config{DSN: dsn, LockTable: lock, Prefix: lock + "_", Workers: 3,
		For: 2 * time.Second, Every: 20 * time.Millisecond, Interval: 200 * time.Millisecond, Job: 60 * time.Millisecond,
		FailEvery: 5, Self: self}
	job, err := NewJob(db, lock, cfg.Prefix, "test", cfg.Job)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = job.DropTables(context.Background()) })
	var out bytes.Buffer
	ok, err := run(context.Background(), cfg, &out)
	t.Logf("output:\n%s", out.String())
	if err != nil || !ok {
		t.Fatalf("run: ok=%v err=%v", ok, err)
	}
}
