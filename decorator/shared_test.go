package decorator_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/decorator"
)

// Decorated calls passed dblock.Shared() hold their key together: two
// calls are inside at once, a decorated call of the key without Shared is
// refused meanwhile, and inside a shared call with its ctx it fails with
// dblock.ErrUpgrade. Once the shared calls return, it gets the key.
func TestSharedDecoratedCallsRunTogether(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	key := decorator.ResourceKey("doc:", func(r req) string { return r.ID })
	write := decorator.WithLockErr(e.locker, key, func(ctx context.Context, r req) error {
		return e.put(ctx, "doc:"+r.ID, 1)
	}, dblock.NoWait())

	var mu sync.Mutex
	inside := 0
	both := make(chan struct{})
	read := decorator.WithLock(e.locker, key, func(ctx context.Context, r req) (int64, error) {
		mu.Lock()
		if inside++; inside == 2 {
			close(both)
		}
		mu.Unlock()
		select {
		case <-both:
		case <-time.After(10 * time.Second):
			return 0, errors.New("the other shared call did not come in within 10s: shared calls excluded each other")
		}
		if err := write(context.Background(), r); !errors.Is(err, dblock.ErrNotAcquired) {
			t.Errorf("an exclusive call while shared calls hold the key = %v, want ErrNotAcquired", err)
		}
		if err := write(ctx, r); !errors.Is(err, dblock.ErrUpgrade) {
			t.Errorf("an exclusive call inside a shared one (same ctx) = %v, want ErrUpgrade", err)
		}
		return e.get(t, "doc:"+r.ID), nil
	}, dblock.Shared(), dblock.WaitTimeout(10*time.Second))

	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for range 2 {
		wg.Go(func() {
			_, err := read(context.Background(), req{ID: "1"})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("shared call: %v", err)
		}
	}
	if err := write(context.Background(), req{ID: "1"}); err != nil {
		t.Fatalf("the exclusive call once the shared calls returned: %v", err)
	}
	if got := e.get(t, "doc:1"); got != 1 {
		t.Errorf("doc:1 = %d after the exclusive call, want 1", got)
	}
}
