package dblock_test

import (
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
)

// Two Lockers on one lock table (two modules of a service, each with its
// own Locker) and one caller's transaction: the keys a transaction holds
// are remembered per Locker for a caller's transaction (Locker.callerTxs),
// so B does not know that A took k in it. B's LockTx(k) takes the row
// again (granted: the transaction's own lock), then its snapshot check
// bumps k's counter on the side pool, which waits for the share lock A's
// check left on the counter row, in this very transaction: a second of
// stall, then a failure that matches no sentinel, for a key the
// transaction holds. (For transactions the Locker opened the state is
// shared, and the same call is reentrant.)
func TestReviewTwoLockersOneCallerTx(t *testing.T) {
	e, a := setupLocker(t)
	b := e.locker(t)
	defer b.Close()
	ctx := ctxT(t)
	k := dblock.Resource("k")
	tx := e.db.WithContext(ctx).Begin()
	defer tx.Rollback()
	if err := a.LockTx(ctx, tx, k); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := b.LockTx(ctx, tx, k)
	t.Logf("second Locker's LockTx of a key the transaction holds: %v after %v", err, time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Errorf("LockTx through a second Locker of the same table, of a key the transaction holds = %v, want nil (reentrant)", err)
	}
}
