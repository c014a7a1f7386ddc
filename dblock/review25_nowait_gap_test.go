package dblock_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// TestReview25NoWaitRefusalBlocksNewKeys: a caller's transaction tries a
// key held by another transaction without waiting (LockTx with NoWait) and
// is refused; it goes on, as a refused caller may. The refused read
// (FOR UPDATE SKIP LOCKED on the key's id) skipped the held row and went on
// to lock the next one: for the newest key, the end of the table. Until
// the caller's transaction ends, no new key can be created in the table
// by anyone: the row's INSERT (1 s lock wait, three attempts) fails with
// 1205, and Do of any new key fails after ~6 s. The same for a DoMulti
// refused with NoWait. Older than review 24's fixes (1f939d7 fails too);
// MariaDB 10.11, raw SQL: "SELECT ... WHERE id = <held> FOR UPDATE SKIP
// LOCKED" in one session makes an INSERT of a higher id in another wait.
func TestReview25NoWaitRefusalBlocksNewKeys(t *testing.T) {
	// An open defect, kept as its reproduction: SKIP LOCKED under
	// REPEATABLE READ leaves a gap lock behind the skipped row (docs/MODES.md,
	// "What is not covered"). Run it with TXLOCK_KNOWN_ISSUES=1.
	if os.Getenv("TXLOCK_KNOWN_ISSUES") == "" {
		t.Skip("open defect, not fixed: run with TXLOCK_KNOWN_ISSUES=1 to reproduce")
	}
	e, l := setupLocker(t)
	ctx := ctxT(t)
	held := dblock.Resource("r25:nowait-held")
	other := holdKey(t, ctx, l, held) // the newest row of the table

	tx := e.db.WithContext(ctx).Begin()
	defer tx.Rollback()
	err := l.LockTx(ctx, tx, held, dblock.NoWait())
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("LockTx(held, NoWait) = %v, want ErrNotAcquired", err)
	}
	_ = other.Rollback()

	// Another process takes a key that has no row yet.
	start := time.Now()
	err = l.Do(ctx, dblock.Resource("r25:nowait-new"), func(context.Context, *gorm.DB) error { return nil })
	t.Logf("Do(new key) while the refused caller's transaction is open: %v after %v", err, time.Since(start))
	if err != nil {
		t.Fatalf("Do of a new key while a caller's transaction that was refused with NoWait stays open = %v, want nil", err)
	}
}
