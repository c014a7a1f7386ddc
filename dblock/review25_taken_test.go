package dblock_test

import (
	"errors"
	"testing"

	"github.com/txlock/txlock/dblock"
)

// TestReview25TakenExclusiveThenSharedRefusesExclusive: a DoMulti in a
// caller's transaction locks a exclusively and is refused at b (held by
// another transaction): a stays locked FOR UPDATE, recorded as taken
// (exclusive). A later LockTx(a, Shared()) is granted at once, and join
// records a as held shared (add drops the taken record). A LockTx(a)
// after that is refused with ErrUpgrade ("held shared by this
// transaction: taking it exclusively would wait for the other shared
// holders"), although the transaction holds a exclusively: there can be
// no other shared holder, and the exclusive read would be granted at once.
func TestReview25TakenExclusiveThenSharedRefusesExclusive(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	a, b := dblock.Resource("r25:taken-a"), dblock.Resource("r25:taken-b")
	other := holdKey(t, ctx, l, b)

	tx := e.db.WithContext(ctx).Begin()
	defer tx.Rollback()
	err := l.DoMulti(dblock.WithTx(ctx, tx), []dblock.Key{a, b}, fnMustNotRun(t), dblock.NoWait())
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("DoMulti(a, b) with b held = %v, want ErrNotAcquired", err)
	}
	_ = other.Rollback()
	// a is locked exclusively by tx: another transaction cannot have it,
	// not even shared.
	if err := l.Do(ctx, a, fnMustNotRun(t), dblock.Shared(), dblock.NoWait()); !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("another transaction's TryLock(a, Shared) = %v, want ErrNotAcquired (tx holds a FOR UPDATE)", err)
	}
	if err := l.LockTx(ctx, tx, a, dblock.Shared()); err != nil {
		t.Fatalf("LockTx(a, Shared) = %v", err)
	}
	err = l.LockTx(ctx, tx, a)
	t.Logf("LockTx(a) exclusive in the transaction that locked a FOR UPDATE: %v", err)
	if err != nil {
		t.Fatalf("LockTx(a) in a transaction that holds a exclusively = %v, want nil", err)
	}
}
