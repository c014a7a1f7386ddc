package dblock_test

import (
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
)

// TestReview25SharedCheckTwoLockersOneTx: two Lockers on one table, one
// caller's transaction, each takes a key shared (LockTx). Each Locker keeps
// its own record of the caller's transaction (callerTxs), so both number
// their first stale-snapshot check 0: both checks name the same counter
// (connection id, 0). The first check leaves it S-locked by the
// transaction; the second check's bump, in autocommit on another
// connection, waits for the transaction's own lock while the transaction
// waits for the bump: a lock wait timeout, and the second LockTx fails
// although nothing else holds either key (after innodb_lock_wait_timeout,
// with the server's bare 1205, not in the library's words). The same for
// a permit (Permits).
func TestReview25SharedCheckTwoLockersOneTx(t *testing.T) {
	e, l1 := setupLocker(t)
	l2 := e.locker(t)
	t.Cleanup(func() { _ = l2.Close() })
	ctx := ctxT(t)
	for _, c := range []struct {
		name string
		opt  dblock.LockOption
	}{{"Shared", dblock.Shared()}, {"Permits", dblock.Permits(2)}} {
		t.Run(c.name, func(t *testing.T) {
			a, b := dblock.Resource("r25:check-a-"+c.name), dblock.Resource("r25:check-b-"+c.name)
			tx := e.db.WithContext(ctx).Begin()
			defer tx.Rollback()
			if err := l1.LockTx(ctx, tx, a, c.opt); err != nil {
				t.Fatalf("l1.LockTx(a) = %v", err)
			}
			start := time.Now()
			err := l2.LockTx(ctx, tx, b, c.opt)
			t.Logf("l2.LockTx(b) in the same transaction: %v after %v", err, time.Since(start))
			if err != nil {
				t.Fatalf("l2.LockTx(b) in a transaction that holds a by l1 = %v, want nil (nobody else holds b)", err)
			}
		})
	}
}
