// Command demo shows txlock keeping two processes of an order service from
// refunding one order twice.
//
// It migrates the lock table and the example's tables, starts two
// instances of the HTTP order service (examples/orders, locked by its
// generated proxy and wired with wire) as separate processes on free local
// ports, creates and pays an order, fires concurrent refunds of it at both
// instances, and prints what happened. It exits 0 only if exactly one
// refund was applied and every other request got a clear answer
// ("already refunded" or a lock timeout).
//
//	make demo                      # or: go run ./examples/orders/cmd/demo
//	go run ./examples/orders/cmd/demo -n 40 -gateway-delay 300ms
//
// The server is named by $DBLOCK_DSN (default root@tcp(127.0.0.1:3306)/test).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/txlock/txlock/examples/internal/exampledb"
	"github.com/txlock/txlock/examples/orders"
)

// envRole makes the process one instance of the HTTP service instead of
// the demo: the demo starts its instances by running itself again.
const envRole = "TXLOCK_DEMO_ROLE"

func main() {
	if os.Getenv(envRole) == "server" {
		os.Exit(serve(os.Args[1:], os.Stdout, os.Stderr))
	}
	cfg := config{DSN: exampledb.DSN(), Tables: orders.DefaultTables}
	flag.IntVar(&cfg.Refunds, "n", 20, "concurrent refund requests, split across the two instances")
	flag.DurationVar(&cfg.GatewayDelay, "gateway-delay", 150*time.Millisecond, "time the fake payment gateway takes per refund (the lock is held meanwhile)")
	flag.StringVar(&cfg.LockTable, "lock-table", "tb_lock", "the lock table")
	flag.Parse()
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	cfg.Self = self

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ok, err := runDemo(ctx, cfg, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}
