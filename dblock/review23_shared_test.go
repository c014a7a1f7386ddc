package dblock_test

import (
	"errors"
	"testing"

	"github.com/txlock/txlock/dblock"
)

// TestReview23SharedStaleSnapshotNewKey: a caller's transaction that read
// before taking a key shared is refused with ErrStaleSnapshot, but only
// when the key's counter row exists already. For a key whose counter
// has never been bumped, the check inserts the row in autocommit and then
// reads it back with a consistent read from the transaction's older
// snapshot, which does not see it: the call fails with "the transaction
// sees 0 of 1 counters", which is not ErrStaleSnapshot, so a caller that
// retries on ErrStaleSnapshot (as documented) gives up instead. The same
// holds for a permit taken in a caller's transaction (its queue counter
// exists only once a waiter queued). The exclusive check reports the same
// situation as ErrStaleSnapshot.
func TestReview23SharedStaleSnapshotNewKey(t *testing.T) {
	e, l := setupLocker(t)
	if !hasSnapshotIsolation(t, e.db) {
		t.Fatal("the test server has no innodb_snapshot_isolation (MariaDB 10.6.18, 10.11.8 and later): the stale-snapshot check cannot be tested")
	}
	ctx := ctxT(t)
	for _, c := range []struct {
		name string
		key  dblock.Key
		opt  dblock.LockOption
	}{
		{"shared", dblock.Resource("r23:stale-new-shared"), dblock.Shared()},
		{"permit", dblock.Resource("r23:stale-new-permit"), dblock.Permits(2)},
		{"exclusive (control)", dblock.Resource("r23:stale-new-x"), nil},
	} {
		tx := e.db.WithContext(ctx).Begin()
		var n int
		if err := tx.Raw("SELECT COUNT(*) FROM `" + e.table + "`").Row().Scan(&n); err != nil {
			t.Fatal(err)
		}
		var opts []dblock.LockOption
		if c.opt != nil {
			opts = append(opts, c.opt)
		}
		err := l.LockTx(ctx, tx, c.key, opts...)
		tx.Rollback()
		t.Logf("%s, new key, after a read: %v", c.name, err)
		if !errors.Is(err, dblock.ErrStaleSnapshot) {
			t.Errorf("LockTx %s of a new key in a transaction that read first = %v, want ErrStaleSnapshot", c.name, err)
		}
	}
}
