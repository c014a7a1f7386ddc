package dblock_test

import (
	"database/sql"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
)

// wrappedTx is a caller's transaction behind a ConnPool of its own type
// (a tracing or metrics wrapper around *sql.Tx), as gorm plugins install.
type wrappedTx struct{ *sql.Tx }

// TestReview25SharedCheckWrappedPool: one Locker, one caller's
// transaction whose gorm ConnPool wraps the *sql.Tx. sqlTxOf finds no
// *sql.Tx, so adopt does not share the transaction's record between
// calls: each LockTx starts a new one, and numbers its shared
// stale-snapshot check 0. The second LockTx(Shared) then bumps the counter
// (connection id, 0) that the first left S-locked by this very
// transaction: it waits 1 s and fails with 1205, although nobody else
// holds b.
func TestReview25SharedCheckWrappedPool(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	a, b := dblock.Resource("r25:wrapped-a"), dblock.Resource("r25:wrapped-b")
	tx := e.db.WithContext(ctx).Begin()
	if tx.Error != nil {
		t.Fatal(tx.Error)
	}
	sqlTx, ok := tx.Statement.ConnPool.(*sql.Tx)
	if !ok {
		t.Fatalf("ConnPool is %T, want *sql.Tx", tx.Statement.ConnPool)
	}
	defer sqlTx.Rollback()
	tx.Statement.ConnPool = wrappedTx{sqlTx}
	if err := l.LockTx(ctx, tx, a, dblock.Shared()); err != nil {
		t.Fatalf("LockTx(a, Shared) = %v", err)
	}
	start := time.Now()
	err := l.LockTx(ctx, tx, b, dblock.Shared())
	t.Logf("LockTx(b, Shared) in the same transaction: %v after %v", err, time.Since(start))
	if err != nil {
		t.Fatalf("LockTx(b, Shared) = %v, want nil (nobody else holds b)", err)
	}
}
