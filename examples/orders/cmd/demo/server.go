package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/decorator/wireset"
	"github.com/txlock/txlock/examples/internal/exampledb"
	"github.com/txlock/txlock/examples/orders"
)

// serve runs one instance of the HTTP order service until SIGINT or
// SIGTERM, with its Prometheus metrics on GET /metrics. Its first line on
// stdout is "listening on http://ADDR".
func serve(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	lockTable := fs.String("lock-table", "tb_lock", "lock table")
	prefix := fs.String("tables-prefix", "demo_", "prefix of the business tables")
	delay := fs.Duration("gateway-delay", 150*time.Millisecond, "fake gateway delay")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "server:", err)
		return 1
	}
	db, err := exampledb.Open(exampledb.DSN())
	if err != nil {
		return fail(err)
	}
	// The Locker records its metrics into m, served on GET /metrics.
	m, err := orders.NewMetrics()
	if err != nil {
		return fail(err)
	}
	defer m.Shutdown(context.Background())
	handler, cleanup, err := orders.InitializeHandler(db, wireset.LockerOptions{dblock.Table(*lockTable), m.LockerOption()},
		orders.TablesWithPrefix(*prefix), orders.FakeGateway{Delay: *delay})
	if err != nil {
		return fail(err)
	}
	defer cleanup()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fail(err)
	}
	srv := &http.Server{Handler: m.Wrap(handler), ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	fmt.Fprintf(stdout, "listening on http://%s\n", ln.Addr())
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fail(err)
	}
	return 0
}

// redact returns dsn without its password, for the report.
func redact(dsn string) string {
	cfg, err := gomysql.ParseDSN(dsn)
	if err != nil {
		return "<unparsable DSN>"
	}
	if cfg.Passwd != "" {
		cfg.Passwd = "xxxxx"
	}
	return cfg.FormatDSN()
}
