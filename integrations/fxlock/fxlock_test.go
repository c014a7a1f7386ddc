package fxlock_test

import (
	"context"
	"strings"
	"testing"

	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/integrations/fxlock"
	"github.com/txlock/txlock/internal/testdb"
)

func TestMain(m *testing.M) { testdb.Main(m) }

// The module provides a Locker with the supplied options, usable while the
// application runs and closed when it stops.
func TestModuleLifecycle(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t)
	table := testdb.Table(t, db)
	testdb.NoLeaks(t, db)
	var l *dblock.Locker
	app := fxtest.New(t,
		fx.NopLogger,
		fx.Supply(db),
		fx.Supply(fxlock.Options{dblock.Table(table)}),
		fxlock.Module(),
		fx.Populate(&l),
	)
	app.RequireStart()
	ctx := context.Background()
	ran := false
	err := l.Do(ctx, dblock.Resource("fx"), func(context.Context, *gorm.DB) error { ran = true; return nil })
	if err != nil || !ran {
		t.Fatalf("Do while the application runs: %v (fn ran: %v)", err, ran)
	}
	app.RequireStop()
	err = l.Do(ctx, dblock.Resource("fx"), func(context.Context, *gorm.DB) error { return nil })
	if err == nil {
		t.Error("Do after the application stopped succeeded: the Locker was not closed")
	}
}

// Without Options the Locker has dblock's defaults; a failing dblock.New
// fails the application's start with fxlock's word.
func TestModuleErrors(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t)
	var l *dblock.Locker
	app := fx.New(fx.NopLogger, fx.Supply(db), fxlock.Module(), fx.Populate(&l))
	if err := app.Err(); err != nil {
		t.Fatalf("module without Options: %v", err)
	}
	if err := app.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := app.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}

	app = fx.New(fx.NopLogger, fx.Supply(db), fx.Supply(fxlock.Options{dblock.Table("bad-name")}),
		fxlock.Module(), fx.Populate(&l))
	err := app.Err()
	if err == nil {
		t.Fatal("module with an invalid option: no error")
	}
	if got := err.Error(); !strings.Contains(got, "fxlock: dblock: Table") {
		t.Errorf("error %q, want fxlock's word and the option at fault", got)
	}
}
