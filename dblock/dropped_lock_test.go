package dblock_test

import (
	"context"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
)

// dropLock takes key with l and drops the handle without Commit or
// Rollback: nothing refers to the Lock once it returns.
//
//go:noinline
func dropLock(t *testing.T, ctx context.Context, l *dblock.Locker, key dblock.Key) {
	t.Helper()
	if _, err := l.Lock(ctx, key); err != nil {
		t.Fatal(err)
	}
}

// TestDroppedLockReleased (issue 14 item 18): a Lock handle dropped
// without Commit or Rollback, under a context that lives on, must not pin
// the key for the life of the process through its own keepalive: once the
// handle is unreachable (garbage collections in a polling loop), the key
// becomes free for another Locker, and the Locker logs a warning through
// its Logger.
func TestDroppedLockReleased(t *testing.T) {
	e := setup(t)
	rec := &logRecorder{}
	l := e.locker(t, dblock.Logger(slog.New(rec)))
	defer l.Close()
	other := e.locker(t)
	defer other.Close()
	key := dblock.Resource("dropped")
	dropLock(t, cancelOnly(t), l, key)
	if err := heldByOther(other, key); err != nil {
		t.Fatalf("right after Lock: %v", err)
	}
	start := time.Now()
	const ceiling = 10 * time.Second
	gcs := 0
	for {
		runtime.GC()
		gcs++
		free := freeForOther(other, key) == nil
		warned := len(rec.atLeast(slog.LevelWarn)) > 0
		if free && warned {
			t.Logf("the dropped lock was released after %v (%d collections); warnings: %q",
				time.Since(start).Round(time.Millisecond), gcs, rec.atLeast(slog.LevelWarn))
			return
		}
		if time.Since(start) > ceiling {
			t.Fatalf("%v and %d collections after the handle was dropped: key free %v, warning logged %v (records %q)",
				ceiling, gcs, free, warned, rec.atLeast(slog.LevelDebug))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
