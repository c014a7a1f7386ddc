// Command fxdemo serves the order service wired with uber-go/fx
// (examples/orders/fxapp) instead of google/wire: the same handler, the
// Locker from fxlock.Module, closed when the application stops (SIGINT or
// SIGTERM). It reads $DBLOCK_DSN, migrates the lock table and creates the
// business tables, and prints "listening on http://ADDR".
//
//	go run ./examples/orders/cmd/fxdemo -addr 127.0.0.1:8080
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"go.uber.org/fx"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/examples/internal/exampledb"
	"github.com/txlock/txlock/examples/orders"
	"github.com/txlock/txlock/examples/orders/fxapp"
	"github.com/txlock/txlock/integrations/fxlock"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	lockTable := flag.String("lock-table", "tb_lock", "lock table")
	prefix := flag.String("tables-prefix", "demo_", "prefix of the business tables")
	delay := flag.Duration("gateway-delay", 150*time.Millisecond, "fake gateway delay")
	flag.Parse()
	if err := run(*addr, *lockTable, orders.TablesWithPrefix(*prefix), *delay); err != nil {
		fmt.Fprintln(os.Stderr, "fxdemo:", err)
		os.Exit(1)
	}
}

// run builds the fx application and runs it until a signal.
func run(addr, lockTable string, tables orders.Tables, delay time.Duration) error {
	ctx := context.Background()
	db, sqlDB, err := exampledb.OpenMigrated(ctx, exampledb.DSN(), lockTable)
	if err != nil {
		return err
	}
	defer sqlDB.Close()
	if err := orders.CreateTables(ctx, db, tables); err != nil {
		return err
	}
	app := fx.New(
		fx.NopLogger,
		fxapp.Options(db, fxlock.Options{dblock.Table(lockTable)}, tables, orders.FakeGateway{Delay: delay}),
		fx.Invoke(func(lc fx.Lifecycle, h *orders.Handler) { serve(lc, addr, h) }),
	)
	if err := app.Err(); err != nil {
		return err
	}
	app.Run()
	return nil
}

// serve starts the HTTP server with the application and shuts it down
// when the application stops (before the Locker closes: fx stops in
// reverse order of start).
func serve(lc fx.Lifecycle, addr string, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error {
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			fmt.Printf("listening on http://%s\n", ln.Addr())
			go func() {
				if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
					fmt.Fprintln(os.Stderr, "fxdemo:", err)
				}
			}()
			return nil
		},
		OnStop: srv.Shutdown,
	})
}
