package hatest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/hatest"
)

// TestSplitBrain: the replica is promoted while the old primary is still
// alive. Without fencing, a holder on each side gets the same key and both
// commit: nothing in replication stops the old one. With the old primary
// made read-only first, an unprivileged holder there can no longer write or
// commit (1290), and new unprivileged acquisitions there fail.
func TestSplitBrain(t *testing.T) {
	hatest.SkipUnlessEnabled(t)
	p := hatest.StartPair(t, false)
	t.Logf("HA-RESULT setup of primary+replica (async): %v", p.Setup.Round(time.Millisecond))
	setupSchema(t, p)
	ctx := context.Background()
	key := dblock.Resource("ha:split")

	oldDB := openGorm(t, p.Primary.DSN("app", "app"))
	oldL := newLocker(t, oldDB)
	if _, err := acquireCommit(ctx, oldL, key, hatest.Ceiling); err != nil {
		t.Fatalf("first acquisition: %v", err)
	}
	hatest.CatchUp(t, p.Primary, p.Replica, hatest.Ceiling)

	// Promote without fencing the old primary: split brain.
	hatest.Promote(t, p.Replica)
	newDB := openGorm(t, p.Replica.DSN("app", "app"))
	newL := newLocker(t, newDB)

	t.Run("unfenced", func(t *testing.T) {
		oldLk, err := oldL.Lock(ctx, key, dblock.WaitTimeout(2*time.Second))
		if err != nil {
			t.Fatalf("holder on the old primary: %v", err)
		}
		defer func() { _ = oldLk.Rollback() }()
		start := time.Now()
		newLk, err := newL.Lock(ctx, key, dblock.WaitTimeout(2*time.Second))
		if err != nil {
			t.Fatalf("holder on the promoted replica: %v", err)
		}
		defer func() { _ = newLk.Rollback() }()
		both := time.Since(start)
		e1 := oldLk.Tx().Exec("UPDATE ha_business SET v = v + 1 WHERE id = 1").Error
		e2 := newLk.Tx().Exec("UPDATE ha_business SET v = v + 1 WHERE id = 1").Error
		if e1 == nil {
			e1 = oldLk.Commit()
		}
		if e2 == nil {
			e2 = newLk.Commit()
		}
		t.Logf("HA-RESULT split brain, no fencing: second holder got the key in %v while the first held it; old primary commit: %v; new primary commit: %v",
			both.Round(time.Microsecond), e1, e2)
		if e1 != nil || e2 != nil {
			t.Errorf("expected both holders to commit (nothing fences the old primary): old %v, new %v", e1, e2)
		}
	})

	t.Run("fenced", func(t *testing.T) {
		holder, err := oldL.Lock(ctx, key, dblock.WaitTimeout(2*time.Second))
		if err != nil {
			t.Fatalf("holder on the old primary: %v", err)
		}
		defer func() { _ = holder.Rollback() }()

		start := time.Now()
		hatest.Fence(t, p.Primary) // SET GLOBAL read_only=1, as root
		t.Logf("HA-RESULT SET GLOBAL read_only=1 with a holder open took %v", time.Since(start).Round(time.Microsecond))

		werr := holder.Tx().Exec("UPDATE ha_business SET v = v + 1 WHERE id = 1").Error
		cerr := holder.Commit()
		t.Logf("HA-RESULT fenced old primary, unprivileged holder: write -> %v (server error %d); Commit -> %v (ErrLockLost %v, server error %d)",
			werr, mysqlErr(werr), cerr, errors.Is(cerr, dblock.ErrLockLost), mysqlErr(cerr))
		if mysqlErr(werr) != 1290 {
			t.Errorf("holder's write on the read-only old primary: %v, want error 1290 reachable with errors.As", werr)
		}
		if !errors.Is(cerr, dblock.ErrLockLost) {
			t.Errorf("holder's Commit after a 1290 = %v, want an error wrapping ErrLockLost", cerr)
		}

		// A write-then-commit holder with the fence arriving between them:
		// the COMMIT itself must fail.
		p.Primary.Exec(t, "SET GLOBAL read_only=0")
		h2, err := oldL.Lock(ctx, key, dblock.WaitTimeout(2*time.Second))
		if err != nil {
			t.Fatalf("second holder on the old primary: %v", err)
		}
		defer func() { _ = h2.Rollback() }()
		if err := h2.Tx().Exec("UPDATE ha_business SET v = v + 1000 WHERE id = 1").Error; err != nil {
			t.Fatalf("write before the fence: %v", err)
		}
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		start = time.Now()
		_, ferr := p.Primary.Admin().ExecContext(fctx, "SET GLOBAL read_only=1")
		cancel()
		t.Logf("HA-RESULT SET GLOBAL read_only=1 with a holder that has written: %v after %v", ferr, time.Since(start).Round(time.Microsecond))
		cerr = h2.Commit()
		t.Logf("HA-RESULT fenced after the write: Commit -> %v (ErrLockLost %v, server error %d)", cerr, errors.Is(cerr, dblock.ErrLockLost), mysqlErr(cerr))
		if !errors.Is(cerr, dblock.ErrLockLost) || mysqlErr(cerr) != 1290 {
			t.Errorf("Commit on the read-only old primary: %v, want ErrLockLost wrapping error 1290", cerr)
		}
		v, _ := p.Primary.QueryString(ctx, "SELECT v FROM ha_business WHERE id = 1")
		t.Logf("old primary business value after fencing: %s", v)

		// New unprivileged acquisitions on the fenced server.
		_, terr := oldL.TryLock(ctx, key)
		t.Logf("HA-RESULT TryLock by app on the read-only old primary: %v (server error %d)", terr, mysqlErr(terr))
		if terr == nil {
			t.Errorf("an unprivileged account got a lock on a read-only server")
		}
		// A Locker created now, on the read-only server.
		_, nerr := dblock.New(oldDB)
		t.Logf("HA-RESULT dblock.New on the read-only old primary: %v", nerr)

		// root (SUPER implies READ ONLY ADMIN in 10.11) is not fenced: a
		// raw SELECT ... FOR UPDATE and a write commit on the read-only
		// server.
		tx, err := p.Primary.Admin().BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		var id int64
		rerr := tx.QueryRowContext(ctx, "SELECT id FROM tb_lock ORDER BY id LIMIT 1 FOR UPDATE").Scan(&id)
		if rerr == nil {
			_, rerr = tx.ExecContext(ctx, "UPDATE ha_business SET v = v + 1 WHERE id = 1")
		}
		if rerr == nil {
			rerr = tx.Commit()
		} else {
			_ = tx.Rollback()
		}
		t.Logf("HA-RESULT root on the read-only old primary: lock + write + commit -> %v (root is not fenced by read_only)", rerr)
	})
}
