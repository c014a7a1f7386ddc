package dblock_test

import (
	"context"
	"database/sql"
	"strings"
	"testing"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// A COMMIT in flight when the caller's context ends (an HTTP request
// cancelled by its client while the handler commits, a deadline reached
// during a slow commit), whose connection then fails before the answer:
// the server has the COMMIT and commits it, but Commit and Do report
// "commit ... not sent, writes not committed", because commitError treats
// any error that matches context.Canceled or DeadlineExceeded as "not
// sent", and Commit adds the context's cause to the driver's error first
// (withCause). A caller told "not committed" runs the work again: twice.
//
// The test makes the order of events deterministic with the server:
// BACKUP STAGE BLOCK_COMMIT holds the COMMIT on the server (seen in
// PROCESSLIST), the relay then holds everything back, the context is
// cancelled, the backup stage ends (the COMMIT commits, its answer held in
// the relay), and the relay resets the connection.

// reviewBlockCommits holds every COMMIT on the server until the returned
// function is called.
func reviewBlockCommits(t *testing.T, ctx context.Context, db *sql.DB) func() {
	t.Helper()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"BACKUP STAGE START", "BACKUP STAGE BLOCK_COMMIT"} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			_ = conn.Close()
			t.Fatalf("%s: %v", q, err)
		}
	}
	released := false
	release := func() {
		if released {
			return
		}
		released = true
		if _, err := conn.ExecContext(context.Background(), "BACKUP STAGE END"); err != nil {
			t.Errorf("BACKUP STAGE END: %v", err)
		}
		_ = conn.Close()
	}
	t.Cleanup(release)
	return release
}

// reviewWaitCommitting waits until connection id runs COMMIT on the server.
func reviewWaitCommitting(t *testing.T, db *gorm.DB, id int64) {
	t.Helper()
	waitFor(t, "the COMMIT to wait on the server", func() bool {
		var n int
		if err := db.Raw("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ? AND INFO = 'COMMIT'", id).Row().Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	})
}

func TestReviewCommitCancelledInFlightIsNotUnknown(t *testing.T) {
	e := setup(t)
	relay, rdb := faultRelay(t)
	l := faultLocker(t, rdb, e.table)
	kv := e.kvTable(t)
	admin := otherPool(t)
	adminSQL, err := admin.DB()
	if err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name string
		// run writes row under a lock taken with ctx, calls block (which
		// holds commits and returns the lock's connection id) just before
		// committing, and returns the outcome of the commit.
		run func(ctx context.Context, row string, block func(tx *gorm.DB)) error
	}{
		{"Lock.Commit", func(ctx context.Context, row string, block func(tx *gorm.DB)) error {
			k, err := l.Lock(ctx, dblock.Resource("k"))
			if err != nil {
				return err
			}
			defer k.Rollback()
			if err := put(k.Tx(), kv, row, 1); err != nil {
				return err
			}
			block(k.Tx())
			return k.Commit()
		}},
		{"Do", func(ctx context.Context, row string, block func(tx *gorm.DB)) error {
			return l.Do(ctx, dblock.Resource("k"), func(_ context.Context, tx *gorm.DB) error {
				if err := put(tx, kv, row, 1); err != nil {
					return err
				}
				block(tx)
				return nil
			})
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			defer relay.Heal()
			row := strings.ReplaceAll(c.name, ".", "_")
			ctx, cancel := context.WithCancel(ctxT(t))
			defer cancel()
			var release func()
			ids := make(chan int64, 1)
			done := make(chan error, 1)
			go func() {
				done <- c.run(ctx, row, func(tx *gorm.DB) {
					ids <- connectionID(t, tx)
					release = reviewBlockCommits(t, ctx, adminSQL)
				})
			}()
			var id int64
			select {
			case id = <-ids:
			case err := <-done:
				t.Fatalf("%s failed before its commit: %v", c.name, err)
			}
			reviewWaitCommitting(t, admin, id) // COMMIT sent, held by the server
			relay.Blackhole()                  // its answer will not come back
			cancel()                           // the caller gives up meanwhile
			release()
			waitFor(t, "the COMMIT to be committed", func() bool { return get(t, e.db, kv, row) == 1 })
			relay.Reset() // the connection fails before the answer
			err := <-done
			t.Logf("%s: COMMIT sent and committed, context cancelled meanwhile, connection then reset: %v", c.name, err)
			if get(t, e.db, kv, row) != 1 {
				t.Fatal("the write is not there: the scenario did not happen as intended")
			}
			if strings.Contains(err.Error(), "not committed") || !isAll(err, dblock.ErrCommitUnknown) {
				t.Errorf("%s = %q: says the writes were not committed (or does not match ErrCommitUnknown), but they were: the COMMIT had been sent", c.name, err)
			}
		})
	}
}
