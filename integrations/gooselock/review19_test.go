package gooselock

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pressly/goose/v3"
)

// TestReview19OnePoolConnHangsPastDeadline: goose's Provider holds one
// connection of its pool (initialize: db.Conn) while it calls
// Locker.Lock(ctx, db). The doc asks for room for three connections; with
// MaxOpenConns(1) (a common setting for a migration tool's pool) Lock
// should fail within its wait bound (WaitTimeout, the context's
// deadline) with an error naming the pool. It hangs instead, for ever:
// NewSQL opens gorm on the pool, and gorm's mysql dialector asks SELECT
// VERSION() with context.Background(), waiting for a connection goose
// holds until Lock returns. Neither the context's deadline nor
// WaitTimeout ends it.
func TestReview19OnePoolConnHangsPastDeadline(t *testing.T) {
	e := setup(t)
	fsys := e.gooseMigrations(t, 1)
	db := e.pool(t)
	db.SetMaxOpenConns(1)
	p, err := goose.NewProvider(goose.DialectMySQL, db, fsys,
		goose.WithLocker(e.locker(t, WaitTimeout(2*time.Second))), goose.WithTableName(e.table+"_goose"), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := p.Up(ctx)
		done <- err
	}()
	select {
	case err := <-done:
		t.Logf("Up on a pool of one connection = %v after %v", err, time.Since(start).Round(time.Millisecond))
		if err == nil || !strings.Contains(err.Error(), "SetMaxOpenConns") {
			t.Errorf("Up on a pool of one connection = %v; want an error naming the pool size", err)
		}
	case <-time.After(15 * time.Second):
		// Closing the pool makes the waiting statement fail, so that the
		// goroutine ends.
		_ = db.Close()
		err := <-done
		t.Errorf("Up (Lock) on a pool of one connection still blocked 15 s after it began, past its 3 s context deadline and 2 s WaitTimeout; it returned %v only when the pool was closed", err)
	}
}
