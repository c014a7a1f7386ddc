package dblock_test

// Honest outcomes of a release: a commit whose answer was lost is in
// doubt, not "not committed"; a commit after the lock was lost is certain
// not to commit; a second release says the lock is not held; statements
// after a loss are refused, never autocommitted.

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// commitPacket is the start of a MySQL COM_QUERY packet's payload for
// COMMIT, as the driver sends it to end a transaction.
var commitPacket = []byte("\x03COMMIT")

// TestCommitInDoubtIsUnknown (issue 14 item 19, first half): the
// connection is cut right after the client's COMMIT reached the server and
// before its answer came back. The server commits; the client cannot know.
// Commit (and Do) must return ErrCommitUnknown, which also matches
// ErrLockLost, and must not say the writes were not committed.
func TestCommitInDoubtIsUnknown(t *testing.T) {
	e := setup(t)
	relay, rdb := faultRelay(t)
	l := faultLocker(t, rdb, e.table)
	kv := e.kvTable(t)
	for _, c := range []struct {
		name   string
		commit func(ctx context.Context, row string) error
	}{
		{"Lock.Commit", func(ctx context.Context, row string) error {
			k, err := l.Lock(ctx, dblock.Resource("k"))
			if err != nil {
				return err
			}
			defer k.Rollback()
			if err := put(k.Tx(), kv, row, 1); err != nil {
				return err
			}
			relay.CutAfterClientSends(commitPacket)
			return k.Commit()
		}},
		{"Do", func(ctx context.Context, row string) error {
			return l.Do(ctx, dblock.Resource("k"), func(_ context.Context, tx *gorm.DB) error {
				if err := put(tx, kv, row, 1); err != nil {
					return err
				}
				relay.CutAfterClientSends(commitPacket)
				return nil
			})
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			defer relay.Heal()
			row := strings.ReplaceAll(c.name, ".", "_")
			err := c.commit(ctxT(t), row)
			t.Logf("%s with the connection cut after COMMIT was sent: %v", c.name, err)
			if !isAll(err, dblock.ErrCommitUnknown, dblock.ErrLockLost) {
				t.Errorf("%s = %v, want ErrCommitUnknown and ErrLockLost", c.name, err)
			}
			if err != nil && strings.Contains(err.Error(), "not committed") {
				t.Errorf("%s = %q: says not committed, but the outcome is unknown", c.name, err)
			}
			// The server got the COMMIT whole: the write is there, which is
			// why "not committed" would be a lie.
			waitFor(t, "the in-doubt write to be committed", func() bool { return get(t, e.db, kv, row) == 1 })
		})
	}
}

// TestCommitAfterLossNotCommitted (issue 14 item 19, second half): when
// the lock was already lost before Commit (its connection killed from
// outside, Lost closed), the outcome is certain: Commit returns
// ErrLockLost, says the writes were not committed, and does not match
// ErrCommitUnknown.
func TestCommitAfterLossNotCommitted(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	killer := otherPool(t)
	ctx := ctxT(t)
	k, err := l.Lock(ctx, dblock.Resource("k"), dblock.Lease(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer k.Rollback()
	if err := put(k.Tx(), kv, "w", 1); err != nil {
		t.Fatal(err)
	}
	killConnection(t, killer, connectionID(t, k.Tx()))
	if _, ok := closedWithin(k.Lost(), opTimeout); !ok {
		t.Fatalf("Lost not closed %v after the lock's connection was killed", opTimeout)
	}
	err = k.Commit()
	t.Logf("Commit after the loss: %v", err)
	if !errors.Is(err, dblock.ErrLockLost) || errors.Is(err, dblock.ErrCommitUnknown) {
		t.Errorf("Commit = %v, want ErrLockLost and not ErrCommitUnknown", err)
	}
	if err != nil && !strings.Contains(err.Error(), "not committed") {
		t.Errorf("Commit = %q, want it to say the writes were not committed", err)
	}
	if v := get(t, e.db, kv, "w"); v != -1 {
		t.Errorf("the lost holder's write is in the table (%d)", v)
	}
}

// TestSecondReleaseNotHeld (issue 14 item 20): Commit of a lock already
// released (by Commit or Rollback) returns ErrNotHeld, not ErrLockLost:
// nothing was lost.
func TestSecondReleaseNotHeld(t *testing.T) {
	_, l := setupLocker(t)
	ctx := ctxT(t)
	for _, first := range []string{"Commit", "Rollback"} {
		k, err := l.Lock(ctx, dblock.Resource("k"))
		if err != nil {
			t.Fatal(err)
		}
		release := map[string]func() error{"Commit": k.Commit, "Rollback": k.Rollback}[first]
		if err := release(); err != nil {
			t.Fatalf("%s: %v", first, err)
		}
		err = k.Commit()
		t.Logf("Commit after %s: %v", first, err)
		if !errors.Is(err, dblock.ErrNotHeld) || errors.Is(err, dblock.ErrLockLost) {
			t.Errorf("Commit after %s = %v, want ErrNotHeld and not ErrLockLost", first, err)
		}
	}
}

// TestStatementsAfterLossRefused (the "Also" of issue 14): once a lock is
// lost inside Do (here its connection is killed from outside and fn sees
// its context end), further statements through fn's tx, with fn's context
// or with another one (a repository's), fail with ErrLockLost and are not
// executed; Do returns ErrLockLost. (For a loss that leaves the connection
// open, where a write could be autocommitted, see
// TestRollbackOnTimeout/FnStatementTimeoutNotAutocommitted.)
func TestStatementsAfterLossRefused(t *testing.T) {
	e, l := setupLocker(t)
	kv := e.kvTable(t)
	killer := otherPool(t)
	var withFnCtx, withOther error
	err := l.Do(cancelOnly(t), dblock.Resource("k"), func(ctx context.Context, tx *gorm.DB) error {
		killConnection(t, killer, connectionID(t, tx))
		select {
		case <-ctx.Done():
		case <-time.After(opTimeout):
			t.Fatalf("fn's context not done %v after the lock's connection was killed", opTimeout)
		}
		withFnCtx = put(tx, kv, "fn-ctx", 1)
		withOther = put(tx.WithContext(context.Background()), kv, "other-ctx", 1)
		return nil
	}, dblock.Lease(3*time.Second))
	t.Logf("statements after the loss: %v; %v; Do: %v", withFnCtx, withOther, err)
	wantLost(t, "a statement through tx with fn's context after the loss", withFnCtx)
	wantLost(t, "a statement through tx with another context after the loss", withOther)
	wantLost(t, "Do", err)
	if n := rowsOf(t, e.db, kv); n != 0 {
		t.Errorf("%d rows written after the loss", n)
	}
}
