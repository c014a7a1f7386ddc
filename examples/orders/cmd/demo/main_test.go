package main

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/txlock/txlock/examples/orders"
	"github.com/txlock/txlock/internal/testdb"
)

// TestMain runs the test binary as an instance of the service when the
// demo starts it as one.
func TestMain(m *testing.M) {
	if os.Getenv(envRole) == "server" {
		os.Exit(serve(os.Args[1:], os.Stdout, os.Stderr))
	}
	testdb.Main(m)
}

// TestDemo runs the demo against the test server, with tables of its own
// and this test binary as the two instances.
func TestDemo(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t)
	lockTable := testdb.Table(t, db)
	dsn, err := testdb.DSN()
	if err != nil {
		t.Fatal(err)
	}
	tables := orders.TablesWithPrefix(lockTable + "_")
	t.Cleanup(func() { _ = orders.DropTables(context.Background(), db, tables) })
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	ok, err := runDemo(ctx, config{
		DSN: dsn, LockTable: lockTable, Tables: tables,
		Refunds: 20, GatewayDelay: 100 * time.Millisecond, Self: self,
	}, &out)
	t.Logf("demo output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Fatal("the demo did not end with exactly one refund applied")
	}
	for _, want := range []string{`instance A\s+pid \d+`, `instance B\s+pid \d+`, `\n\s+applied\s+1\s`, `in the database\s+1\s`, "OK: exactly one refund applied"} {
		if !regexp.MustCompile(want).MatchString(out.String()) {
			t.Errorf("output does not match %q", want)
		}
	}
}
