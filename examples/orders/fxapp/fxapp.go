// Package fxapp wires the order service with uber-go/fx: the graph that
// orders.InitializeHandler builds with google/wire, built by fx instead.
// The Locker comes from fxlock.Module and is closed when the application
// stops.
//
//	app := fx.New(
//		fxapp.Options(db, fxlock.Options{dblock.Table("tb_lock")}, tables, gateway),
//		fx.Invoke(func(h *orders.Handler) { ... }),
//	)
package fxapp

import (
	"go.uber.org/fx"
	"gorm.io/gorm"

	"github.com/txlock/txlock/examples/orders"
	"github.com/txlock/txlock/integrations/fxlock"
)

// Module returns the fx module "orders": the repository, the service, its
// generated locking proxy bound to orders.OrderService, and the HTTP
// handler. It takes a *gorm.DB, orders.Tables, an orders.Gateway and a
// *dblock.Locker (fxlock.Module) from the application.
func Module() fx.Option {
	return fx.Module("orders",
		fx.Provide(
			orders.NewRepository,
			fx.Annotate(orders.NewService, fx.As(new(orders.LockedOrderServiceInner))),
			fx.Annotate(orders.NewLockedOrderService, fx.As(new(orders.OrderService))),
			orders.NewHandler,
		),
	)
}

// Options returns the whole application: db, the Locker's options, the
// business tables and the gateway supplied, fxlock.Module and Module.
func Options(db *gorm.DB, lockOpts fxlock.Options, tables orders.Tables, gateway orders.Gateway) fx.Option {
	return fx.Options(
		fx.Supply(db, lockOpts, tables),
		fx.Provide(func() orders.Gateway { return gateway }),
		fxlock.Module(),
		Module(),
	)
}
