package dblock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
)

// DefaultLease is the lease of a lock whose acquisition does not set one.
const DefaultLease = 60 * time.Second

// minLease is the shortest lease: the server's idle timeouts count whole
// seconds.
const minLease = time.Second

// leasedConnsTracked bounds how many pool connections a Locker remembers
// having configured; one it forgot is configured again (one round trip).
const leasedConnsTracked = 1024

// rowGrace is how long after a QueryRowContext the keepalive assumes the
// caller may still be reading its *sql.Row (database/sql asks callers to
// Scan a Row at once).
const rowGrace = 100 * time.Millisecond

// Lease bounds how long a lock outlives a holder that stopped talking to
// the server (a process frozen, a network silently cut): the server ends
// the lock's transaction, and frees the key, once the connection has been
// idle in it for the lease (MariaDB: the session's idle_transaction_timeout;
// MySQL: wait_timeout). The lease is rounded up to whole seconds, at least
// 1 s; the default is DefaultLease.
//
// The holder learns first: Lock.Lost is closed, and Do's fn context is
// cancelled with cause ErrLockLost, when no statement on the lock's
// connection got an answer for the lease minus a margin (a fifth of it, at
// least 200 ms), which is before the server can free the key; no clock
// synchronisation is assumed. Waiting for a further key inside the lock's
// transaction counts as a statement: keep such waits (WaitTimeout) below
// the lease. While the holder is connected, a keepalive
// (DO 1) runs on the lock's connection whenever it has been idle for a
// third of the lease, between the holder's own statements, never beside
// them. So a statement that runs longer than the lease minus the margin
// makes the holder give the lock up: choose a lease above your longest
// statement.
//
// It applies to the transactions the Locker opens (Do, DoMulti, Lock,
// TryLock); LockTx and WithTx run in the caller's transaction and leave its
// session alone. The server-side setting is made once per pooled
// connection, the first time a lock uses it, and stays on that connection:
// a transaction of yours that later runs on it is also ended after being
// idle for the lease (on MySQL, wait_timeout also closes the connection
// after being idle in the pool that long; database/sql then opens another).
// Give your own sessions the same bound (the DSN parameter
// idle_transaction_timeout) if you want one policy everywhere, and do not
// change the variable on connections behind the Locker's back: it sets it
// again only on connections it has not seen.
func Lease(d time.Duration) LockOption {
	return func(lc *lockConfig) error {
		if d < minLease {
			return fmt.Errorf("dblock: Lease must be at least %v, got %v", minLease, d)
		}
		lc.lease = d
		return nil
	}
}

// leaseSeconds is d rounded up to the whole seconds the server counts.
func leaseSeconds(d time.Duration) int {
	return int(math.Ceil(d.Seconds()))
}

// leaseMargin is how much before the server's bound the holder gives up.
func leaseMargin(d time.Duration) time.Duration {
	return max(d/5, 200*time.Millisecond)
}

// configureSession sets the server-side lease on conn's session, unless
// the Locker already did for this connection and lease.
func (l *Locker) configureSession(ctx context.Context, conn *sql.Conn, lease time.Duration) error {
	var dc any
	if err := conn.Raw(func(driverConn any) error { dc = driverConn; return nil }); err != nil {
		return err
	}
	secs := leaseSeconds(lease)
	if got, ok := l.leased.get(dc); ok && got == secs {
		return nil
	}
	if _, err := conn.ExecContext(ctx, l.leaseStatement(secs)); err != nil {
		return fmt.Errorf("dblock: setting the lease on the lock's connection: %w", err)
	}
	l.leased.put(dc, secs)
	return nil
}

func (l *Locker) leaseStatement(secs int) string {
	if l.srv.mariaDB {
		return "SET SESSION idle_transaction_timeout = " + strconv.Itoa(secs)
	}
	return "SET SESSION wait_timeout = " + strconv.Itoa(secs)
}

// leasedTx is the connection of a transaction the Locker opened: every
// statement of the holder goes through it. It keeps the lease: it records
// when the server last answered, pings the connection when the holder is
// idle, and reports the lock lost when the lease runs out or a statement
// shows the connection or the transaction is gone.
//
// The connection is not safe for concurrent use, and a result set being
// read occupies it: op serialises the holder's statements and the
// keepalive, and the keepalive skips while a result set may be open.
type leasedTx struct {
	tx     *sql.Tx
	lease  time.Duration
	margin time.Duration
	lose   func(error) // called once the lock can no longer be vouched for

	op sync.Mutex // held for each statement, and for each keepalive

	mu       sync.Mutex // guards the fields below
	lastOK   time.Time  // send time of the latest statement the server answered
	rows     []*sql.Rows
	lastRow  time.Time // when the latest *sql.Row was handed out
	stopped  bool
	timer    *time.Timer
	pingStmt string
}

func newLeasedTx(tx *sql.Tx, lease time.Duration) *leasedTx {
	return &leasedTx{tx: tx, lease: lease, margin: leaseMargin(lease), pingStmt: "DO 1"}
}

// start arms the keepalive once the lock is held; answered is the send
// time of a statement the server answered after the grant.
func (t *leasedTx) start(answered time.Time, lose func(error)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lose, t.lastOK = lose, answered
	if !t.stopped {
		t.timer = time.AfterFunc(t.untilNextLocked(), t.tick)
	}
}

// deadline is when the holder must consider the lock lost.
func (t *leasedTx) deadlineLocked() time.Time { return t.lastOK.Add(t.lease - t.margin) }

// stop ends the keepalive; the transaction is ending.
func (t *leasedTx) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stopped = true
	if t.timer != nil {
		t.timer.Stop()
	}
}

// tick is the keepalive: it runs on a timer until stop.
func (t *leasedTx) tick() {
	now := time.Now()
	t.mu.Lock()
	if t.stopped {
		t.mu.Unlock()
		return
	}
	deadline := t.deadlineLocked()
	if !now.Before(deadline) {
		t.stopped = true
		last, lose := t.lastOK, t.lose
		t.mu.Unlock()
		lose(fmt.Errorf("%w: no answer on the lock's connection for %v (lease %v)", ErrLockLost, now.Sub(last).Round(time.Millisecond), t.lease))
		return
	}
	idle := now.Sub(t.lastOK) >= t.lease/3
	t.mu.Unlock()

	// Ping only between the holder's statements: TryLock fails while one
	// runs, and then the server is busy with it, not idle.
	if idle && t.op.TryLock() {
		if t.readingLocked() {
			t.op.Unlock()
		} else {
			ctx, cancel := context.WithDeadline(context.Background(), deadline)
			sent := time.Now()
			_, err := t.tx.ExecContext(ctx, t.pingStmt)
			cancel()
			t.op.Unlock()
			if !errors.Is(err, gomysql.ErrBusyBuffer) { // a result set was still being read: try later
				t.answered(sent, err)
			}
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.stopped {
		t.timer.Reset(t.untilNextLocked())
	}
}

// untilNextLocked is how long until the keepalive should look again: when
// the connection will have been idle for a third of the lease, or at the
// deadline.
func (t *leasedTx) untilNextLocked() time.Duration {
	return max(time.Until(earlier(t.lastOK.Add(t.lease/3), t.deadlineLocked())), 10*time.Millisecond)
}

// readingLocked reports whether a result set of the holder may still be
// open on the connection. The caller holds op.
func (t *leasedTx) readingLocked() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if time.Since(t.lastRow) < rowGrace {
		return true
	}
	open := t.rows[:0]
	for _, r := range t.rows {
		// Columns fails once the rows are closed; database/sql makes it
		// safe beside the reader's Next.
		if _, err := r.Columns(); err == nil {
			open = append(open, r)
		}
	}
	clear(t.rows[len(open):])
	t.rows = open
	return len(open) > 0
}

// answered records the outcome of a statement sent at sent.
func (t *leasedTx) answered(sent time.Time, err error) {
	if err == nil || serverAnswered(err) {
		t.mu.Lock()
		if sent.After(t.lastOK) {
			t.lastOK = sent
		}
		t.mu.Unlock()
	}
	if err == nil || !losesLock(err) {
		return
	}
	t.stop()
	t.mu.Lock()
	lose := t.lose
	t.mu.Unlock()
	if lose == nil { // not armed yet: the acquisition reports the error itself
		return
	}
	if mysqlErrorNumber(err) == erLockDeadlock {
		// The server rolled the transaction back: running it again is safe.
		lose(fmt.Errorf("%w: %w: %w", ErrLockLost, ErrDeadlock, err))
		return
	}
	lose(fmt.Errorf("%w: a statement on the lock's connection failed: %w", ErrLockLost, err))
}

// serverAnswered reports whether err came from the server (so the
// connection was alive when it answered).
func serverAnswered(err error) bool {
	var me *gomysql.MySQLError
	return errors.As(err, &me) || errors.Is(err, sql.ErrNoRows)
}

// losesLock reports whether err means the transaction, and with it the
// lock, is gone: the connection was lost or interrupted, or the server
// rolled the transaction back (deadlock).
func losesLock(err error) bool {
	return isConnectionLoss(err) || mysqlErrorNumber(err) == erLockDeadlock ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// PrepareContext implements gorm.ConnPool.
func (t *leasedTx) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	t.op.Lock()
	defer t.op.Unlock()
	sent := time.Now()
	st, err := t.tx.PrepareContext(ctx, query)
	t.answered(sent, err)
	return st, err
}

// ExecContext implements gorm.ConnPool.
func (t *leasedTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	t.op.Lock()
	defer t.op.Unlock()
	sent := time.Now()
	res, err := t.tx.ExecContext(ctx, query, args...)
	t.answered(sent, err)
	return res, err
}

// QueryContext implements gorm.ConnPool.
func (t *leasedTx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	t.op.Lock()
	defer t.op.Unlock()
	sent := time.Now()
	rows, err := t.tx.QueryContext(ctx, query, args...)
	if err == nil {
		t.mu.Lock()
		t.rows = append(t.rows, rows)
		t.mu.Unlock()
	}
	t.answered(sent, err)
	return rows, err
}

// QueryRowContext implements gorm.ConnPool.
func (t *leasedTx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	t.op.Lock()
	defer t.op.Unlock()
	sent := time.Now()
	row := t.tx.QueryRowContext(ctx, query, args...)
	t.mu.Lock()
	t.lastRow = time.Now()
	t.mu.Unlock()
	t.answered(sent, row.Err())
	return row
}

// StmtContext implements gorm.Tx.
func (t *leasedTx) StmtContext(ctx context.Context, stmt *sql.Stmt) *sql.Stmt {
	return t.tx.StmtContext(ctx, stmt)
}

// Commit implements gorm.TxCommitter.
func (t *leasedTx) Commit() error {
	t.stop()
	t.op.Lock()
	defer t.op.Unlock()
	return t.tx.Commit()
}

// Rollback implements gorm.TxCommitter.
func (t *leasedTx) Rollback() error {
	t.stop()
	t.op.Lock()
	defer t.op.Unlock()
	return t.tx.Rollback()
}

// ping sends a keepalive now, beside nothing (the caller holds no
// statement open).
func (t *leasedTx) ping(ctx context.Context) error {
	t.op.Lock()
	defer t.op.Unlock()
	sent := time.Now()
	_, err := t.tx.ExecContext(ctx, t.pingStmt)
	t.answered(sent, err)
	return err
}

// earlier returns the earlier of a and b.
func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
