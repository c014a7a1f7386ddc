// Package fxlock provides a txlock Locker to uber-go/fx applications: the
// fx counterpart of decorator/wireset.
//
// Module provides a *dblock.Locker built from the application's *gorm.DB
// and closes it when the application stops (OnStop runs Locker.Close).
// dblock options are supplied as one Options value, optional:
//
//	app := fx.New(
//		fx.Supply(db), // *gorm.DB, or a constructor of it
//		fx.Supply(fxlock.Options{dblock.Table("tb_lock_orders")}),
//		fxlock.Module(),
//		fx.Invoke(func(l *dblock.Locker) { ... }),
//	)
//
// It is the only txlock package that imports fx: dblock and decorator
// build without it.
package fxlock

import (
	"context"
	"fmt"

	"go.uber.org/fx"
	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// Options are the dblock options NewLocker passes to dblock.New: supply
// them with fx.Supply(fxlock.Options{...}). Without them the Locker has
// dblock's defaults (the lock table tb_lock).
type Options []dblock.Option

// Params are what NewLocker takes from the application's graph: the
// *gorm.DB, the optional Options, and the lifecycle that closes the
// Locker.
type Params struct {
	fx.In

	// DB is the database the Locker takes its locks on.
	DB *gorm.DB
	// Options are passed to dblock.New; none gives dblock's defaults.
	Options Options `optional:"true"`
	// Lifecycle gets the hook that closes the Locker on stop.
	Lifecycle fx.Lifecycle
}

// Module returns the fx module "txlock", which provides a *dblock.Locker
// (NewLocker). It is a function, not a package variable, so that the
// package holds no state.
func Module() fx.Option {
	return fx.Module("txlock", fx.Provide(NewLocker))
}

// NewLocker is the fx constructor of the Locker: dblock.New on p.DB with
// p.Options, closed by an OnStop hook when the application stops. It is
// what Module provides; use it directly to provide the Locker in a module
// of your own.
func NewLocker(p Params) (*dblock.Locker, error) {
	l, err := dblock.New(p.DB, p.Options...)
	if err != nil {
		return nil, fmt.Errorf("fxlock: %w", err)
	}
	p.Lifecycle.Append(fx.Hook{
		OnStop: func(context.Context) error {
			if err := l.Close(); err != nil {
				return fmt.Errorf("fxlock: closing the Locker: %w", err)
			}
			return nil
		},
	})
	return l, nil
}
