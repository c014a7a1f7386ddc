package dblock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/gorm"
)

// rowGrace is how long after a QueryRowContext the keepalive assumes the
// caller may still be reading its *sql.Row (database/sql asks callers to
// Scan a Row at once).
const rowGrace = 100 * time.Millisecond

// pruneRowsAt is how many result sets the connection remembers before it
// drops the closed ones, so that a holder running many queries keeps a
// short list.
const pruneRowsAt = 8

// keeper is the connection of a transaction the Locker opened, keeping its
// lease: every statement of the holder goes through it. It records when
// the server last answered, pings the connection before a statement when
// the last answer is older than the margin and in the background when the
// holder is idle, and reports the lock lost when the lease runs out or a
// statement shows the transaction is gone. After a loss it refuses every
// statement, so that nothing the holder sends runs outside the
// transaction (in autocommit).
//
// The connection is not safe for concurrent use, and a result set being
// read occupies it: op serialises the holder's statements and the
// keepalive, and the background keepalive skips while a result set may be
// open. Statements of a gorm PrepareStmt session run through StmtContext,
// outside the keeper: the keepalive then waits a third of the lease after
// the last one before it pings.
type keeper struct {
	l      *Locker
	tx     *sql.Tx
	on     execer // where keepalives go: tx, or a leadership's pinned connection
	lease  time.Duration
	margin time.Duration

	op sync.Mutex // held for each statement, and for each keepalive

	mu        sync.Mutex // guards the fields below
	lose      func(error)
	lastOK    time.Time // send time of the latest statement the server answered
	rows      []*sql.Rows
	lastRow   time.Time // when the latest *sql.Row was handed out
	untracked time.Time // when gorm last ran a prepared statement (StmtContext)
	rowsErr   error     // the error a closed result set met, not yet looked at
	// guarded: autocommit is off and a savepoint marks the transaction
	// (Galera multi-writer, or once gorm ran a prepared statement the
	// keeper cannot see), checked before COMMIT; autocommitOff: the
	// session must get autocommit back before the pool has it.
	guarded, autocommitOff bool
	stalled                bool  // a COMMIT or ROLLBACK got no answer: the connection is left to fail
	refused                error // why statements are refused: the transaction is gone
	stopped                bool
	timer                  *time.Timer
}

const pingStmt = "DO 1"

// ownStmts runs the Locker's own statements in a transaction it opened:
// the keeper's guards, without the holder's statement check.
type ownStmts struct{ c *keeper }

func (o ownStmts) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return o.c.exec(ctx, query, args...)
}

func (o ownStmts) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return o.c.query(ctx, query, false, args...)
}

func (o ownStmts) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return o.c.queryRow(ctx, query, false, args...)
}

// execer runs a statement: a transaction, or a pinned connection.
type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func newKeeper(l *Locker, tx *sql.Tx, lease time.Duration) *keeper {
	return &keeper{l: l, tx: tx, on: tx, lease: lease, margin: leaseMargin(lease)}
}

// newConnKeeper keeps the lease of a connection that holds no transaction
// (a leadership's): only the keepalive and the loss are used, with the
// connection's statements sent under op and reported with answered.
func newConnKeeper(l *Locker, conn *sql.Conn, lease time.Duration) *keeper {
	return &keeper{l: l, on: conn, lease: lease, margin: leaseMargin(lease)}
}

// arm starts the keepalive once the lock is held; lose is called once if
// the lock is lost.
func (c *keeper) arm(lose func(error)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lose = lose
	if !c.stopped {
		c.timer = time.AfterFunc(c.untilNextLocked(), c.tick)
	}
}

// deadlineLocked is when the holder must consider the lock lost.
func (c *keeper) deadlineLocked() time.Time { return c.lastOK.Add(c.lease - c.margin) }

// stop ends the keepalive.
func (c *keeper) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopped = true
	if c.timer != nil {
		c.timer.Stop()
	}
}

// refuse makes every later statement fail with err without being sent.
func (c *keeper) refuse(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.refused == nil {
		c.refused = err
	}
	c.stopped = true
	if c.timer != nil {
		c.timer.Stop()
	}
}

// tick is the background keepalive: it runs on a timer until stop.
func (c *keeper) tick() {
	now := time.Now()
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return
	}
	deadline := c.deadlineLocked()
	if !now.Before(deadline) {
		last, lose := c.lastOK, c.lose
		c.mu.Unlock()
		lose(fmt.Errorf("%w: no answer on the lock's connection for %v (lease %v)", ErrLockLost, now.Sub(last).Round(time.Millisecond), c.lease))
		return
	}
	idle := now.Sub(c.lastOK) >= c.lease/3 && now.Sub(c.untracked) >= c.lease/3
	c.mu.Unlock()

	// Ping only between the holder's statements: TryLock fails while one
	// runs, and then the server is busy with it, not idle.
	if idle && c.op.TryLock() {
		if !c.readingLocked() {
			ctx, cancel := context.WithDeadline(context.Background(), deadline)
			c.pingLocked(ctx)
			cancel()
		}
		c.op.Unlock()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.stopped {
		c.timer.Reset(c.untilNextLocked())
	}
}

// untilNextLocked is how long until the keepalive should look again.
func (c *keeper) untilNextLocked() time.Duration {
	next := c.lastOK.Add(c.lease / 3)
	if u := c.untracked.Add(c.lease / 3); u.After(next) {
		next = u
	}
	if d := c.deadlineLocked(); d.Before(next) {
		next = d
	}
	return max(time.Until(next), 10*time.Millisecond)
}

// readingLocked reports whether a result set of the holder may still be
// open on the connection, dropping the ones that were closed. The caller
// holds op.
func (c *keeper) readingLocked() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.lastRow) < rowGrace {
		return true
	}
	c.pruneRowsLocked()
	return len(c.rows) > 0
}

// pruneRowsLocked drops the result sets that were closed. The caller holds
// mu.
func (c *keeper) pruneRowsLocked() {
	open := c.rows[:0]
	for _, r := range c.rows {
		// Columns fails once the rows are closed; database/sql makes it
		// safe beside the reader's Next.
		if _, err := r.Columns(); err == nil {
			open = append(open, r)
			continue
		}
		// An error met while reading the rows (a deadlock that arrived
		// after the columns) may have ended the transaction: the holder's
		// call returned long before it.
		if err := r.Err(); err != nil && c.rowsErr == nil {
			c.rowsErr = err
		}
	}
	clear(c.rows[len(open):])
	c.rows = open
}

// checkRowsLocked looks at the result sets the holder has closed since the
// last look: one whose reading failed with an error that ended the
// transaction loses the lock. The caller holds op, not mu.
func (c *keeper) checkRowsLocked() {
	c.mu.Lock()
	c.pruneRowsLocked()
	err := c.rowsErr
	c.rowsErr = nil
	c.mu.Unlock()
	if err != nil {
		c.answered(time.Time{}, err)
	}
}

// pingLocked sends a keepalive. The caller holds op.
func (c *keeper) pingLocked(ctx context.Context) error {
	sent := time.Now()
	_, err := c.on.ExecContext(ctx, pingStmt)
	if errors.Is(err, gomysql.ErrBusyBuffer) {
		return nil // a result set was still being read: it shows the server is alive soon enough
	}
	c.answered(sent, err)
	return err
}

// beforeLocked runs before each statement of the holder: it refuses the
// statement once the transaction is gone, and pings first when the last
// answer is older than the margin, so that every statement may run for
// the lease minus twice the margin. The caller holds op.
func (c *keeper) beforeLocked(ctx context.Context) error {
	c.checkRowsLocked()
	c.mu.Lock()
	refused, armed := c.refused, c.lose != nil
	stale := armed && time.Since(c.lastOK) > c.margin
	c.mu.Unlock()
	if refused != nil {
		return refused
	}
	if stale && !c.readingLocked() {
		if err := c.pingLocked(ctx); err != nil {
			if r := c.refusedErr(); r != nil {
				return r
			}
			return err
		}
	}
	return nil
}

// readyLocked readies the connection for a statement of the holder
// (beforeLocked), and guards the transaction first when guard is set (a
// statement that may end it unseen). The caller holds op.
func (c *keeper) readyLocked(ctx context.Context, guard bool) error {
	if err := c.beforeLocked(ctx); err != nil {
		return err
	}
	if guard {
		return c.guardLocked(ctx, false)
	}
	return nil
}

func (c *keeper) refusedErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.refused
}

// answered records the outcome of a statement sent at sent: an answer
// extends the lease; an error that ended the transaction loses the lock.
func (c *keeper) answered(sent time.Time, err error) {
	if err == nil || serverAnswered(err) {
		c.mu.Lock()
		if sent.After(c.lastOK) {
			c.lastOK = sent
		}
		if err == nil {
			c.untracked = time.Time{} // the connection was free: no prepared result set is open
		}
		c.mu.Unlock()
	}
	if !c.l.endsTransaction(err) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return
	}
	var lost error
	switch mysqlErrorNumber(err) {
	case erLockDeadlock:
		// The server rolled the transaction back: running it again is safe.
		lost = fmt.Errorf("%w: %w: %w", ErrLockLost, ErrDeadlock, err)
	case erCheckRead:
		lost = fmt.Errorf("%w: %w: the transaction was rolled back by the server: %w", ErrLockLost, ErrStaleSnapshot, err)
	case erLockWaitTimeout:
		lost = fmt.Errorf("%w: a lock wait timed out and the whole transaction was rolled back by the server (innodb_rollback_on_timeout is ON): %w", ErrLockLost, err)
	default:
		lost = fmt.Errorf("%w: a statement on the lock's connection failed: %w", ErrLockLost, err)
	}
	c.loseWith(lost)
}

// loseWith refuses every later statement with lost and, once the lock is
// held (armed), declares it lost; before, the acquisition reports the
// error itself.
func (c *keeper) loseWith(lost error) {
	c.refuse(lost)
	c.mu.Lock()
	lose := c.lose
	c.mu.Unlock()
	if lose != nil {
		lose(lost)
	}
}

// fresh makes sure the server answered within the margin (pinging if
// not) and returns when a statement sent now must have been answered:
// half a margin before the holder would consider the lock lost, so that a
// wait the server ends then is answered in time.
func (c *keeper) fresh(ctx context.Context) (time.Time, error) {
	c.op.Lock()
	defer c.op.Unlock()
	if err := c.beforeLocked(ctx); err != nil {
		return time.Time{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.deadlineLocked().Add(-c.margin / 2), nil
}

// ping sends a keepalive now (Lock.KeepAlive): the caller holds no result
// set open.
func (c *keeper) ping(ctx context.Context) error {
	c.op.Lock()
	defer c.op.Unlock()
	if err := c.refusedErr(); err != nil {
		return err
	}
	return c.pingLocked(ctx)
}

// ExecContext runs a statement of the holder in the transaction. One that
// would end the transaction on the server is refused (statementEffect);
// one that may, unseen (CALL, EXECUTE), runs in a guarded transaction and
// is followed by a check that the transaction is still there.
func (c *keeper) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	switch statementEffect(query) {
	case ends:
		return nil, implicitCommitErr(query)
	case unseen:
		c.op.Lock()
		defer c.op.Unlock()
		if err := c.readyLocked(ctx, true); err != nil {
			return nil, err
		}
		sent := time.Now()
		res, err := c.tx.ExecContext(ctx, query, args...)
		c.answered(sent, err)
		if err != nil {
			return res, c.lossOr(err)
		}
		return res, c.stillOpenLocked(ctx)
	}
	return c.exec(ctx, query, args...)
}

// stillOpenLocked checks, after a statement that may have ended a guarded
// transaction unseen, that the transaction is the one the Locker began
// (its savepoint is there). If not, the lock is lost: what the holder sent
// before may have been committed by that statement. The caller holds op.
func (c *keeper) stillOpenLocked(ctx context.Context) error {
	sent := time.Now()
	_, err := c.tx.ExecContext(ctx, "RELEASE SAVEPOINT "+abortSavepoint)
	if err == nil {
		_, err = c.tx.ExecContext(ctx, "SAVEPOINT "+abortSavepoint)
	}
	if mysqlErrorNumber(err) == erSavepointMissing {
		err = fmt.Errorf("%w: %w: %w", ErrCommitUnknown, ErrLockLost, errEndedUnseen)
		c.loseWith(err)
		return err
	}
	c.answered(sent, err)
	return err
}

// exec runs a statement in the transaction: the holder's, or the Locker's
// own (which may set autocommit).
func (c *keeper) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	c.op.Lock()
	defer c.op.Unlock()
	if err := c.beforeLocked(ctx); err != nil {
		return nil, err
	}
	sent := time.Now()
	res, err := c.tx.ExecContext(ctx, query, args...)
	c.answered(sent, err)
	return res, c.lossOr(err)
}

// lossOr returns err, or when the lock was lost while the statement ran
// (the lease or MaxHold ran out, and the statement was cut off: context
// canceled, or the connection closed under it), the loss, which is what
// made it fail.
func (c *keeper) lossOr(err error) error {
	if err == nil || errors.Is(err, ErrLockLost) || !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) && !isConnectionLoss(err) {
		return err
	}
	if r := c.refusedErr(); r != nil {
		if errors.Is(r, err) {
			return err // the loss this very statement caused: its own error says it
		}
		return fmt.Errorf("%w (the statement in flight: %v)", r, err)
	}
	return err
}

// QueryContext runs a query in the transaction.
func (c *keeper) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	e := statementEffect(query)
	if e == ends {
		return nil, implicitCommitErr(query)
	}
	return c.query(ctx, query, e == unseen, args...)
}

// query runs a query in the transaction, guarded first when guard is set
// (a statement that may end the transaction unseen: the check before
// COMMIT catches it, as its result set rules out a check right after).
func (c *keeper) query(ctx context.Context, query string, guard bool, args ...any) (*sql.Rows, error) {
	c.op.Lock()
	defer c.op.Unlock()
	if err := c.readyLocked(ctx, guard); err != nil {
		return nil, err
	}
	sent := time.Now()
	rows, err := c.tx.QueryContext(ctx, query, args...)
	if err == nil {
		c.mu.Lock()
		if len(c.rows) >= pruneRowsAt {
			c.pruneRowsLocked()
		}
		c.rows = append(c.rows, rows)
		c.mu.Unlock()
	}
	c.answered(sent, err)
	return rows, c.lossOr(err)
}

// QueryRowContext runs a query of one row in the transaction. A refused
// statement returns a Row whose Scan fails with the loss.
func (c *keeper) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	e := statementEffect(query)
	if e == ends {
		return errorRow(implicitCommitErr(query))
	}
	return c.queryRow(ctx, query, e == unseen, args...)
}

// queryRow is query for one row.
func (c *keeper) queryRow(ctx context.Context, query string, guard bool, args ...any) *sql.Row {
	c.op.Lock()
	defer c.op.Unlock()
	if err := c.readyLocked(ctx, guard); err != nil {
		return errorRow(err)
	}
	sent := time.Now()
	row := c.tx.QueryRowContext(ctx, query, args...)
	c.mu.Lock()
	c.lastRow = time.Now()
	c.mu.Unlock()
	c.answered(sent, row.Err())
	if err := row.Err(); err != nil {
		if lerr := c.lossOr(err); lerr != err {
			return errorRow(lerr)
		}
	}
	return row
}

// PrepareContext prepares a statement on the transaction (gorm's
// PrepareStmt sessions, which bind it with StmtContext; a database/sql
// caller through SQL, which runs it directly). The statement then runs
// outside the keeper: the transaction is guarded, as in StmtContext.
func (c *keeper) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	if statementEffect(query) == ends {
		return nil, implicitCommitErr(query)
	}
	c.op.Lock()
	defer c.op.Unlock()
	if err := c.readyLocked(ctx, true); err != nil {
		return nil, err
	}
	sent := time.Now()
	st, err := c.tx.PrepareContext(ctx, query)
	c.answered(sent, err)
	if err == nil {
		c.mu.Lock()
		c.untracked = time.Now()
		c.mu.Unlock()
	}
	return st, err
}

// StmtContext binds a prepared statement to the transaction; gorm's
// PrepareStmt sessions then run it outside the keeper, which only learns
// that the connection may be busy for a while.
func (c *keeper) StmtContext(ctx context.Context, stmt *sql.Stmt) *sql.Stmt {
	c.op.Lock()
	defer c.op.Unlock()
	// The statement runs outside the keeper, which cannot see an error
	// that ends the transaction: guard it, so that what follows such an
	// error is rolled back instead of run in autocommit.
	if err := c.readyLocked(ctx, true); err != nil {
		ctx, cancel := context.WithCancelCause(ctx)
		cancel(err)
		return c.tx.StmtContext(ctx, stmt) // fails when used, with err as the cause
	}
	c.mu.Lock()
	c.untracked = time.Now()
	c.mu.Unlock()
	return c.tx.StmtContext(ctx, stmt)
}

// errNotSent marks a COMMIT that was refused without being sent.
var errNotSent = errors.New("not sent")

// erSavepointMissing is ER_SP_DOES_NOT_EXIST: the savepoint is gone.
const erSavepointMissing = 1305

// abortSavepoint marks a guarded transaction: it exists only while the
// transaction the Locker began is alive.
const abortSavepoint = "txlock_held"

// errSilentAbort says a transaction was aborted without the abort being
// reported to its statements.
var errSilentAbort = errors.New("the server aborted the transaction (on Galera: another node's holder committed first) without telling its statements; what they did after the abort was rolled back")

// errEndedUnseen says a guarded transaction ended on the server through a
// statement the keeper did not see end it (a prepared statement or a
// procedure that commits).
var errEndedUnseen = errors.New("the transaction ended on the server behind the holder's back (a prepared statement or a procedure that commits?); what was sent after that was rolled back")

// errStalled says the server did not answer a COMMIT or ROLLBACK within
// the lease.
var errStalled = errors.New("no answer from the server within the lease")

// saveAutocommit keeps the session's autocommit in a user variable of the
// session before the guard turns it off, for restoreAutocommit.
const saveAutocommit = "@txlock_autocommit = @@session.autocommit"

// guardLocked turns autocommit off (unless it is already) and sets the
// savepoint by which the commit tells whether the server ended the
// transaction behind the holder's back: statements sent after such an
// abort then stay in a new transaction, which is rolled back. The caller
// holds op.
func (c *keeper) guardLocked(ctx context.Context, autocommitOff bool) error {
	if c.guarded {
		return nil
	}
	if !autocommitOff {
		c.mu.Lock()
		c.autocommitOff = true // restored even if the answer is lost: it may have run
		c.mu.Unlock()
		sent := time.Now()
		_, err := c.tx.ExecContext(ctx, "SET "+saveAutocommit+", SESSION autocommit = 0")
		c.answered(sent, err)
		if err != nil {
			return err
		}
	}
	sent := time.Now()
	_, err := c.tx.ExecContext(ctx, "SAVEPOINT "+abortSavepoint)
	c.answered(sent, err)
	if err == nil {
		c.guarded = true
	}
	return err
}

// bounded runs op, a COMMIT or ROLLBACK, whose driver call takes no
// context: when the server has not answered within the lease (a silent
// partition), it returns errStalled and leaves op to fail with the
// connection.
func (c *keeper) bounded(op func() error) error {
	done := make(chan error, 1)
	go func() { done <- op() }()
	t := time.NewTimer(c.lease)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		c.mu.Lock()
		c.stalled = true
		c.mu.Unlock()
		return errStalled
	}
}

// commit ends the keepalive and commits; after a loss nothing is sent. A
// guarded transaction is first checked to still be the one the Locker
// began (its savepoint is there), and rolled back otherwise.
func (c *keeper) commit() error {
	c.stop()
	c.op.Lock()
	defer c.op.Unlock()
	c.checkRowsLocked()
	if err := c.refusedErr(); err != nil {
		return fmt.Errorf("%w (%w)", err, errNotSent)
	}
	if c.guarded {
		if _, err := c.tx.ExecContext(context.Background(), "RELEASE SAVEPOINT "+abortSavepoint); err != nil {
			_ = c.bounded(c.tx.Rollback)
			switch mysqlErrorNumber(err) {
			case erSavepointMissing:
				if c.l.touch {
					return fmt.Errorf("%w: %w: %w (%w)", ErrDeadlock, errSilentAbort, err, errNotSent)
				}
				return fmt.Errorf("%w: %w: %w (%w)", ErrLockLost, errEndedUnseen, err, errNotSent)
			case erLockDeadlock:
				return fmt.Errorf("%w: %w (%w)", ErrDeadlock, err, errNotSent)
			}
			return fmt.Errorf("%w (%w)", err, errNotSent)
		}
	}
	return c.bounded(c.tx.Commit)
}

// rollback ends the keepalive and rolls back.
func (c *keeper) rollback() error {
	c.stop()
	c.op.Lock()
	defer c.op.Unlock()
	if c.guarded && !c.l.touch && c.refusedErr() == nil {
		// A statement may have ended the transaction unseen, committing
		// what came before it: the rollback would not undo that. (On
		// Galera multi-writer a missing savepoint is the cluster's abort,
		// which committed nothing.)
		_, err := c.tx.ExecContext(context.Background(), "RELEASE SAVEPOINT "+abortSavepoint)
		if mysqlErrorNumber(err) == erSavepointMissing {
			_ = c.bounded(c.tx.Rollback)
			return fmt.Errorf("%w: %w", errEndedUnseen, err)
		}
	}
	return c.bounded(c.tx.Rollback)
}

// autocommitWasOff reports whether the session's autocommit was turned
// off for the transaction.
func (c *keeper) autocommitWasOff() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.autocommitOff
}

// wasStalled reports whether a COMMIT or ROLLBACK got no answer.
func (c *keeper) wasStalled() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stalled
}

// lockConn is what gorm sees as the connection of a Lock's transaction
// (Lock.Tx): the keeper, and the Lock, so that a *gorm.DB kept by the
// caller keeps the Lock reachable. Its Commit and Rollback are the Lock's.
type lockConn struct {
	*keeper
	lock *Lock
}

var (
	_ gorm.Tx             = (*lockConn)(nil)
	_ gorm.GetDBConnector = (*lockConn)(nil)
)

// Commit implements gorm.TxCommitter: it is Lock.Commit.
func (c *lockConn) Commit() error { return c.lock.Commit() }

// Rollback implements gorm.TxCommitter: it is Lock.Rollback.
func (c *lockConn) Rollback() error { return c.lock.Rollback() }

// GetDBConn implements gorm.GetDBConnector: the pool the transaction runs
// on.
func (c *lockConn) GetDBConn() (*sql.DB, error) { return c.l.sqlDB, nil }

// lockConnOf returns the Lock connection tx runs on, or nil.
func lockConnOf(tx *gorm.DB) *lockConn {
	if tx == nil || tx.Statement == nil {
		return nil
	}
	pool := tx.Statement.ConnPool
	if p, ok := pool.(*gorm.PreparedStmtTX); ok {
		pool = p.Tx
	}
	c, _ := pool.(*lockConn)
	return c
}
