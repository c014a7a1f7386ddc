package dblock_test

// SQL shape of New's topology detection and of the Galera modes, and the
// mapping of errors that mean a held lock's transaction did not or will
// not commit (1213, 1290, 1047).

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/lockkey"
)

// qTouch7 is the write of row 7 that a Galera multi-writer holder sends
// right after its locking read.
const qTouch7 = "UPDATE `tb_lock` SET updated_at = GREATEST(NOW(6), updated_at + INTERVAL 1 MICROSECOND) WHERE id = 7"

// The statements of a Galera multi-writer hold besides the row's write:
// autocommit off and a savepoint after the grant; the savepoint released
// before COMMIT; autocommit as it was again after the transaction.
const (
	qAutocommitOff = "SET @txlock_autocommit = @@session.autocommit, SESSION autocommit = 0"
	qSavepointHeld = "SAVEPOINT txlock_held"
	qReleaseHeld   = "RELEASE SAVEPOINT txlock_held"
	qAutocommitOn  = "SET SESSION autocommit = COALESCE(@txlock_autocommit, 1)"
)

// expectMultiWriterHold expects the statements that start a multi-writer
// hold after its first key's write.
func expectMultiWriterHold(m mocked) {
	m.mock.ExpectExec(qAutocommitOff).WillReturnResult(sqlmock.NewResult(0, 0))
	m.mock.ExpectExec(qSavepointHeld).WillReturnResult(sqlmock.NewResult(0, 0))
}

// galeraVars are the variables of a Galera node.
var galeraVars = [][2]string{{"wsrep_on", "ON"}}

func TestSQLNewRefusesReadOnly(t *testing.T) {
	for _, c := range []struct {
		name string
		vars [][2]string
	}{
		{"read_only", [][2]string{{"read_only", "ON"}}},
		{"super_read_only", [][2]string{{"super_read_only", "ON"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := newMocked(t)
			// A later variable of the same name wins: the mock lists read_only OFF first.
			m.expectDetectWith(mysqlVersion, mysqlComment, false, c.vars)
			_, err := m.newLocker()
			if !errors.Is(err, dblock.ErrReadOnly) {
				t.Fatalf("New = %v, want ErrReadOnly", err)
			}
			mustContain(t, err, "read-only", "replica", "AllowReadOnly")
			m.done(t)

			m.expectDetectWith(mysqlVersion, mysqlComment, false, c.vars)
			m.expectSideCheck()
			l, err := m.newLocker(dblock.AllowReadOnly())
			if err != nil {
				t.Fatalf("New(AllowReadOnly) = %v", err)
			}
			defer l.Close()
			m.done(t)
		})
	}
}

func TestSQLGaleraModes(t *testing.T) {
	t.Run("no mode", func(t *testing.T) {
		m := newMocked(t)
		m.expectDetectWith(mariaVersion, mariaComment, true, galeraVars)
		_, err := m.newLocker()
		if err == nil {
			t.Fatal("New on a Galera node without a mode succeeded")
		}
		mustContain(t, err, "Galera", "GaleraSingleWriter()", "GaleraMultiWriter()")
		m.done(t)
	})
	t.Run("both modes", func(t *testing.T) {
		m := newMocked(t)
		if _, err := m.newLocker(dblock.GaleraSingleWriter(), dblock.GaleraMultiWriter()); err == nil {
			t.Fatal("New with both Galera modes succeeded")
		}
		m.done(t)
	})
	t.Run("single writer: plain locks", func(t *testing.T) {
		m, l, key := galeraLocker(t, dblock.GaleraSingleWriter(), galeraVars)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
		m.mock.ExpectCommit()
		if err := l.Do(context.Background(), key, nop); err != nil {
			t.Fatal(err)
		}
		m.done(t)
	})
	t.Run("multi writer off Galera: plain locks", func(t *testing.T) {
		m, l, key := galeraLocker(t, dblock.GaleraMultiWriter(), nil)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
		m.mock.ExpectCommit()
		if err := l.Do(context.Background(), key, nop); err != nil {
			t.Fatal(err)
		}
		m.done(t)
	})
	t.Run("multi writer writes the row and checks the transaction before COMMIT", func(t *testing.T) {
		// Each key's row is written; autocommit goes off and a savepoint
		// marks the transaction, whose release before COMMIT shows the
		// cluster has not aborted it; autocommit comes back on after.
		m, l, key := galeraLocker(t, dblock.GaleraMultiWriter(), galeraVars)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
		m.mock.ExpectExec(qTouch7).WillReturnResult(sqlmock.NewResult(0, 1))
		expectMultiWriterHold(m)
		inner := dblock.Resource("order:43")
		m.expectLookup(inner, 8)
		m.mock.ExpectQuery(nestedStmt(8)).WillReturnRows(lockRow(8))
		m.mock.ExpectExec("UPDATE `tb_lock` SET updated_at = GREATEST(NOW(6), updated_at + INTERVAL 1 MICROSECOND) WHERE id = 8").
			WillReturnResult(sqlmock.NewResult(0, 1))
		m.mock.ExpectExec(qReleaseHeld).WillReturnResult(sqlmock.NewResult(0, 0))
		m.mock.ExpectCommit()
		m.mock.ExpectExec(qAutocommitOn).WillReturnResult(sqlmock.NewResult(0, 0))
		err := l.Do(context.Background(), key, func(ctx context.Context, _ *gorm.DB) error {
			return l.Do(ctx, inner, nop, dblock.NoPriorReads())
		})
		if err != nil {
			t.Fatal(err)
		}
		m.done(t)
	})
	t.Run("multi writer: an abort nobody was told of", func(t *testing.T) {
		// The savepoint is gone: the transaction ended behind the holder's
		// back. Nothing is committed; what was sent since is rolled back.
		m, l, key := galeraLocker(t, dblock.GaleraMultiWriter(), galeraVars)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
		m.mock.ExpectExec(qTouch7).WillReturnResult(sqlmock.NewResult(0, 1))
		expectMultiWriterHold(m)
		m.mock.ExpectExec(qReleaseHeld).WillReturnError(&gomysql.MySQLError{Number: 1305, Message: "SAVEPOINT txlock_held does not exist"})
		m.mock.ExpectRollback()
		m.mock.ExpectExec(qAutocommitOn).WillReturnResult(sqlmock.NewResult(0, 0))
		err := l.Do(context.Background(), key, nop)
		if !errors.Is(err, dblock.ErrLockLost) || !errors.Is(err, dblock.ErrDeadlock) || errors.Is(err, dblock.ErrCommitUnknown) {
			t.Fatalf("Do = %v, want ErrLockLost and ErrDeadlock (certain: not committed)", err)
		}
		mustContain(t, err, "not committed")
		m.done(t)
	})
	t.Run("multi writer: certification failure at COMMIT", func(t *testing.T) {
		m, l, key := galeraLocker(t, dblock.GaleraMultiWriter(), galeraVars)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
		m.mock.ExpectExec(qTouch7).WillReturnResult(sqlmock.NewResult(0, 1))
		expectMultiWriterHold(m)
		m.mock.ExpectExec(qReleaseHeld).WillReturnResult(sqlmock.NewResult(0, 0))
		m.mock.ExpectCommit().WillReturnError(&gomysql.MySQLError{Number: 1213, Message: "Deadlock found when trying to get lock; try restarting transaction"})
		m.mock.ExpectExec(qAutocommitOn).WillReturnResult(sqlmock.NewResult(0, 0))
		k, err := l.Lock(context.Background(), key)
		if err != nil {
			t.Fatal(err)
		}
		err = k.Commit()
		if !errors.Is(err, dblock.ErrLockLost) || !errors.Is(err, dblock.ErrDeadlock) {
			t.Fatalf("Commit = %v, want ErrLockLost and ErrDeadlock", err)
		}
		m.done(t)
	})
	t.Run("multi writer refuses a caller's transaction", func(t *testing.T) {
		m, l := galeraNode(t, dblock.GaleraMultiWriter(), galeraVars)
		m.mock.ExpectBegin()
		m.mock.ExpectRollback()
		tx := m.db.Begin()
		err := l.LockTx(context.Background(), tx, dblock.Resource("order:42"))
		tx.Rollback()
		mustContain(t, err, "GaleraMultiWriter", "Do or Lock")
		m.done(t)
	})
	t.Run("multi writer: write aborted", func(t *testing.T) {
		m, l, key := galeraLocker(t, dblock.GaleraMultiWriter(), galeraVars)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
		m.mock.ExpectExec(qTouch7).WillReturnError(&gomysql.MySQLError{Number: 1213, Message: "Deadlock found"})
		m.mock.ExpectRollback()
		err := l.Do(context.Background(), key, fnMustNotRun(t))
		checkMapped(t, err, dblock.ErrDeadlock, 1213, []error{dblock.ErrNotAcquired, dblock.ErrTableMissing, dblock.ErrInvalidKey})
		m.done(t)
	})
}

// galeraNode returns a mock of a Galera node (with vars) and a Locker on
// it in mode, closed when the test ends.
func galeraNode(t *testing.T, mode dblock.Option, vars [][2]string) (mocked, *dblock.Locker) {
	t.Helper()
	m := newMocked(t)
	m.expectDetectWith(mariaVersion, mariaComment, true, vars)
	m.expectSideCheck()
	l, err := m.newLocker(mode)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return m, l
}

// galeraLocker is galeraNode, expecting the first acquisition of the key
// it returns (order:42, row 7) up to BEGIN.
func galeraLocker(t *testing.T, mode dblock.Option, vars [][2]string) (mocked, *dblock.Locker, dblock.Key) {
	t.Helper()
	m, l := galeraNode(t, mode, vars)
	key := dblock.Resource("order:42")
	m.expectLookup(key, 7)
	m.expectFirstBegin(mockMariaDB)
	return m, l, key
}

// TestSQLGaleraNotPrimary: a Galera node outside the primary component
// answers 1047 to whatever an acquisition sends first (the row lookup,
// the lease before BEGIN, the locking read, the token bump): ErrNotPrimary, without a
// retry; and in a transaction that already holds a lock, ErrLockLost too.
func TestSQLGaleraNotPrimary(t *testing.T) {
	notPrimary := &gomysql.MySQLError{Number: 1047, Message: "WSREP has not yet prepared node for application use"}
	others := []error{dblock.ErrNotAcquired, dblock.ErrDeadlock, dblock.ErrReadOnly, dblock.ErrLockLost}
	t.Run("row lookup", func(t *testing.T) {
		m, l := galeraNode(t, dblock.GaleraSingleWriter(), galeraVars)
		key := dblock.Resource("order:42")
		h := lockkey.Fields(key).Hash()
		m.side.mock.ExpectQuery(qLookup).WithArgs(h[:]).WillReturnError(notPrimary)
		_, err := l.Lock(context.Background(), key)
		checkMapped(t, err, dblock.ErrNotPrimary, 1047, others)
		m.done(t)
	})
	t.Run("first statement of the transaction", func(t *testing.T) {
		m, l := galeraNode(t, dblock.GaleraSingleWriter(), galeraVars)
		key := dblock.Resource("order:42")
		m.expectLookup(key, 7)
		m.mock.ExpectExec(qLease60).WillReturnError(notPrimary)
		_, err := l.Lock(context.Background(), key)
		checkMapped(t, err, dblock.ErrNotPrimary, 1047, others)
		m.done(t)
	})
	t.Run("locking read", func(t *testing.T) {
		m, l, key := galeraLocker(t, dblock.GaleraMultiWriter(), galeraVars)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnError(notPrimary)
		m.mock.ExpectRollback()
		err := l.Do(context.Background(), key, fnMustNotRun(t))
		checkMapped(t, err, dblock.ErrNotPrimary, 1047, others)
		m.done(t)
	})
	t.Run("token bump", func(t *testing.T) {
		m, l, key := galeraLocker(t, dblock.GaleraSingleWriter(), galeraVars)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
		m.side.mock.ExpectExec(regexPrefix + "^SET STATEMENT innodb_lock_wait_timeout = 1 FOR INSERT INTO `tb_lock_fence`").WillReturnError(notPrimary)
		m.mock.ExpectRollback()
		err := l.Do(context.Background(), key, fnMustNotRun(t), dblock.Fencing())
		checkMapped(t, err, dblock.ErrNotPrimary, 1047, others)
		m.done(t)
	})
	t.Run("second key of a transaction the Locker opened", func(t *testing.T) {
		// The lock's connection failed: the held order:42 is lost.
		m, l, key := galeraLocker(t, dblock.GaleraSingleWriter(), galeraVars)
		inner := dblock.Resource("order:43")
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
		m.expectLookup(inner, 8)
		m.mock.ExpectQuery(nestedStmt(8)).WillReturnError(notPrimary)
		m.mock.ExpectRollback()
		err := l.Do(context.Background(), key, func(ctx context.Context, _ *gorm.DB) error {
			return l.Do(ctx, inner, fnMustNotRun(t), dblock.NoPriorReads())
		})
		if !errors.Is(err, dblock.ErrLockLost) || mysqlNumber(t, err) != 1047 {
			t.Fatalf("Do = %v, want ErrLockLost wrapping 1047", err)
		}
		waitReturned(m)
		m.done(t)
	})
	t.Run("second key of the caller's transaction", func(t *testing.T) {
		m, l := galeraNode(t, dblock.GaleraSingleWriter(), galeraVars)
		first, second := dblock.Resource("order:42"), dblock.Resource("order:43")
		m.mock.ExpectBegin()
		m.expectLookup(first, 7)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(firstCallerRow(7, 31))
		m.expectLookup(second, 8)
		m.mock.ExpectQuery(lockStmt("", 8, "")).WillReturnError(notPrimary)
		m.mock.ExpectRollback()
		tx := m.db.Begin()
		ctx := dblock.WithTx(context.Background(), tx)
		if err := l.LockTx(ctx, tx, first, dblock.NoPriorReads()); err != nil {
			t.Fatal(err)
		}
		err := l.LockTx(ctx, tx, second, dblock.NoPriorReads())
		if !errors.Is(err, dblock.ErrNotPrimary) || !errors.Is(err, dblock.ErrLockLost) || mysqlNumber(t, err) != 1047 {
			t.Errorf("LockTx = %v, want ErrNotPrimary and ErrLockLost (order:42, held, is lost with the transaction)", err)
		}
		tx.Rollback()
		m.done(t)
	})
}

// waitReturned waits until m's connection is back in the pool: database/sql
// rolls a lost transaction back in a goroutine of its own.
func waitReturned(m mocked) {
	deadline := time.Now().Add(5 * time.Second)
	for m.sqlDB.Stats().InUse > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
}

// TestSQLHoldErrorsLoseTheLock: errors that mean the holding transaction
// is gone or will not commit, at a statement of the holder or at COMMIT,
// make Commit report ErrLockLost, never success: 1213 (deadlock; on
// Galera a brute-force abort, after which a COMMIT would answer OK and
// commit nothing), 1290 (the server was made read-only), 1047 (the Galera
// node left the primary component).
func TestSQLHoldErrorsLoseTheLock(t *testing.T) {
	const write = "UPDATE orders SET status = 'paid' WHERE id = 42"
	for _, n := range []uint16{1213, 1290, 1047} {
		t.Run(fmt.Sprintf("%d at a write, then Commit", n), func(t *testing.T) {
			m, l, key := firstAcquire(t, mockMariaDB)
			m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
			m.mock.ExpectExec(write).WillReturnError(&gomysql.MySQLError{Number: n, Message: "mocked"})
			m.mock.ExpectRollback() // database/sql, as the lock's context is cancelled
			k, err := l.Lock(context.Background(), key)
			if err != nil {
				t.Fatal(err)
			}
			if err := k.Tx().Exec(write).Error; mysqlNumber(t, err) != n {
				t.Fatalf("Exec = %v, want error %d", err, n)
			}
			select {
			case <-k.Lost():
			default:
				t.Error("Lost() not closed after the failed write")
			}
			// No COMMIT may reach the server: it could answer OK.
			err = k.Commit()
			if !errors.Is(err, dblock.ErrLockLost) {
				t.Fatalf("Commit = %v, want ErrLockLost", err)
			}
			if mysqlNumber(t, err) != n {
				t.Errorf("Commit = %v, want it to wrap error %d", err, n)
			}
			waitReturned(m)
			m.done(t)
		})
		t.Run(fmt.Sprintf("%d at COMMIT", n), func(t *testing.T) {
			m, l, key := firstAcquire(t, mockMariaDB)
			m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
			m.mock.ExpectCommit().WillReturnError(&gomysql.MySQLError{Number: n, Message: "mocked"})
			err := l.Do(context.Background(), key, nop)
			if !errors.Is(err, dblock.ErrLockLost) {
				t.Fatalf("Do = %v, want ErrLockLost", err)
			}
			if mysqlNumber(t, err) != n {
				t.Errorf("Do = %v, want it to wrap error %d", err, n)
			}
			m.done(t)
		})
	}
	t.Run("1213 swallowed by fn: Do does not commit", func(t *testing.T) {
		m, l, key := firstAcquire(t, mockMariaDB)
		m.mock.ExpectQuery(lockStmt("", 7, "")).WillReturnRows(ownRow(7))
		m.mock.ExpectExec(write).WillReturnError(&gomysql.MySQLError{Number: 1213, Message: "Deadlock found"})
		m.mock.ExpectRollback()
		err := l.Do(context.Background(), key, func(ctx context.Context, tx *gorm.DB) error {
			_ = tx.Exec(write).Error // ignored: the library must still not report success
			return nil
		})
		if !errors.Is(err, dblock.ErrLockLost) {
			t.Fatalf("Do = %v, want ErrLockLost", err)
		}
		waitReturned(m)
		m.done(t)
	})
}
