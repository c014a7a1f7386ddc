package dblock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/schema"
)

// queries holds the statements of one Locker, built once from its table
// name (validated by Table, so it cannot inject SQL).
type queries struct {
	selectRow   string // a key's row id by hash, autocommit
	insertRow   string // create a key's row, autocommit
	lockFrom    string // "id FROM `t` WHERE id = ": the locking read after SELECT [hint]
	processes   string // find a tagged waiting statement
	snapshotOn  string // MariaDB: make a joined transaction's stale writes fail
	snapshotOff string // and back to the server's default before the transaction ends
	bumpFence   string // take the next fencing token, autocommit
	touchFrom   string // Galera multi-writer: write the locked row, before its id
}

func buildQueries(table string, mariaDB bool) queries {
	t := "`" + table + "`"
	insertWait := ""
	if mariaDB {
		insertWait = "SET STATEMENT innodb_lock_wait_timeout = 1 FOR "
	}
	return queries{
		selectRow:   "SELECT id FROM " + t + " WHERE key_hash = ?",
		insertRow:   insertWait + "INSERT IGNORE INTO " + t + " (key_hash, resource, operation, method, user_id, is_global) VALUES (?, ?, ?, ?, ?, ?)",
		lockFrom:    "id FROM " + t + " WHERE id = ",
		processes:   "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND INFO LIKE ?",
		snapshotOn:  "SET SESSION innodb_snapshot_isolation = ON",
		snapshotOff: "SET SESSION innodb_snapshot_isolation = DEFAULT",
		touchFrom:   "UPDATE " + t + " SET updated_at = GREATEST(NOW(6), updated_at + INTERVAL 1 MICROSECOND) WHERE id = ",
		bumpFence: "INSERT INTO `" + schema.FenceTable(table) + "` (key_hash, token) VALUES (?, LAST_INSERT_ID(1))" +
			" ON DUPLICATE KEY UPDATE token = LAST_INSERT_ID(token + 1)",
	}
}

// deadlineMargin is how much earlier than the context's deadline the
// server is asked to give up waiting, so that the server (not the client
// closing its socket) ends the wait and the connection stays usable.
const deadlineMargin = 10 * time.Millisecond

// errRowGone reports that the locking read found no row: it was collected
// after the id was cached (protocol step 2).
var errRowGone = errors.New("dblock: key row gone")

// lockStatement appends the locking read of row id to buf. tag, when not
// zero, marks the statement so that killWaiting can find it in the
// process list. wait > 0 bounds the wait on MariaDB (server side); on MySQL
// the caller bounds it with a timer.
func (l *Locker) lockStatement(buf []byte, id int64, tag uint64, wait time.Duration, noWait bool) []byte {
	if l.srv.mariaDB && wait > 0 {
		// max_statement_time takes fractions of a second (innodb_lock_wait_timeout
		// and WAIT n take whole seconds only); the lock-wait timeout is set
		// above it so that the statement timeout is the one that fires.
		buf = append(buf, "SET STATEMENT max_statement_time="...)
		buf = strconv.AppendFloat(buf, wait.Seconds(), 'f', 6, 64)
		buf = append(buf, ", innodb_lock_wait_timeout="...)
		buf = strconv.AppendInt(buf, int64(math.Ceil(wait.Seconds()))+1, 10)
		buf = append(buf, " FOR "...)
	}
	buf = append(buf, "SELECT "...)
	if tag != 0 {
		buf = append(buf, "/*"...)
		buf = append(buf, l.marker...)
		buf = strconv.AppendUint(buf, tag, 10)
		buf = append(buf, "*/ "...)
	}
	buf = append(buf, l.q.lockFrom...)
	buf = strconv.AppendInt(buf, id, 10)
	buf = append(buf, " FOR UPDATE"...)
	if noWait {
		buf = append(buf, " NOWAIT"...)
	}
	return buf
}

// lockRow takes the row lock of key (row id) on pool, the connection of an
// open transaction the caller owns. A row that was collected since its id
// was cached is created again and locked (protocol steps 1 and 2). The
// locking read of the missing row took a gap lock; `txlock gc` never
// deletes the newest row, so that gap lies below the highest id and the new
// row, with an id above it, does not wait for this transaction. A row
// deleted otherwise fails fast with ErrNotAcquired (see findRow).
func (l *Locker) lockRow(ctx context.Context, pool gorm.ConnPool, key Key, id int64, lc lockConfig) error {
	for attempt := 0; ; attempt++ {
		err := l.lockRowOnce(ctx, pool, key, id, lc)
		if !errors.Is(err, errRowGone) {
			return err
		}
		l.cache.forget(key, id)
		if attempt == 2 {
			return fmt.Errorf("dblock: the row of %s in %s disappeared %d times while locking it: is a gc deleting live rows?", key, l.cfg.table, attempt+1)
		}
		if id, err = l.findRow(ctx, key, true); err != nil {
			return err
		}
	}
}

func (l *Locker) lockRowOnce(ctx context.Context, pool gorm.ConnPool, key Key, id int64, lc lockConfig) error {
	wait, noWait := lc.wait, lc.noWait
	var ctxBound error // set when the context's deadline, not an option, bounds the wait
	if dl, ok := ctx.Deadline(); ok && !noWait {
		switch rem := time.Until(dl) - deadlineMargin; {
		case rem <= time.Millisecond:
			noWait, wait, ctxBound = true, 0, context.DeadlineExceeded
		case wait == 0 || rem < wait:
			wait, ctxBound = rem, context.DeadlineExceeded
		}
	}
	timer := wait > 0 && !l.srv.mariaDB
	var tag uint64
	if ctx.Done() != nil || timer {
		tag = l.seq.Add(1)
	}
	var buf [256]byte
	q := string(l.lockStatement(buf[:0], id, tag, wait, noWait))

	var killed chan struct{}
	var t *time.Timer
	if timer {
		// MySQL has no per-statement sub-second lock wait: interrupt the
		// waiting statement (error 1317) from the side pool when wait runs out.
		killed = make(chan struct{})
		t = time.AfterFunc(wait, func() {
			defer close(killed)
			l.killWaiting(ctx, tag)
		})
	}
	var got int64
	l.tel.waiting(ctx, key, 1)
	err := pool.QueryRowContext(ctx, q).Scan(&got)
	l.tel.waiting(ctx, key, -1)
	if t != nil && !t.Stop() {
		<-killed
	}
	switch {
	case err == nil:
		if l.touch {
			return l.touchRow(ctx, pool, key, id)
		}
		return nil
	case errors.Is(err, sql.ErrNoRows):
		return errRowGone
	}
	if cerr := ctx.Err(); cerr != nil {
		if tag != 0 {
			// The driver only closed its socket: the server keeps the
			// statement queued for the lock until its own timeout, and a
			// later grant to it would delay live waiters. Take it out.
			l.killWaiting(ctx, tag)
		}
		if ctxBound != nil && errors.Is(cerr, context.DeadlineExceeded) {
			if mysqlErrorNumber(err) != 0 {
				// The server answered (its own timeout, set just before the
				// deadline): the connection and the transaction are intact.
				return l.acquireError(key, err, ctxBound)
			}
			// The client's deadline won the race with the server's answer:
			// the wait ran out all the same, but the driver closed the
			// connection, and the transaction with its other locks is gone.
			return fmt.Errorf("%w: %s: %w; the driver closed the transaction's connection, its other locks are gone (%w)",
				ErrNotAcquired, key, context.Cause(ctx), ErrLockLost)
		}
		return fmt.Errorf("dblock: acquiring %s: %w", key, context.Cause(ctx))
	}
	return l.acquireError(key, err, ctxBound)
}

// touchRow writes the locked row id in the holding transaction (Galera
// multi-writer): the row is then in the transaction's write set, so that
// certification lets at most one of two overlapping holders on different
// nodes commit. The value always changes (an update that changes nothing
// writes nothing), and it does not wait: the transaction holds the row.
func (l *Locker) touchRow(ctx context.Context, pool gorm.ConnPool, key Key, id int64) error {
	var buf [160]byte
	q := strconv.AppendInt(append(buf[:0], l.q.touchFrom...), id, 10)
	if _, err := pool.ExecContext(ctx, string(q)); err != nil {
		return l.acquireError(key, withCause(ctx, err), nil)
	}
	return nil
}

// killTimeout bounds the cleanup of an abandoned waiting statement.
const killTimeout = 2 * time.Second

// killWaiting interrupts this Locker's waiting statement tagged tag, if the
// server still runs it, from the side pool (never the caller's pool).
func (l *Locker) killWaiting(ctx context.Context, tag uint64) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killTimeout)
	defer cancel()
	pattern := "%/*" + l.marker + strconv.FormatUint(tag, 10) + "*/%"
	// The statement may still be on its way to the server: look again a
	// few times before concluding that it is gone.
	for i, pause := range [...]time.Duration{0, 2 * time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond} {
		time.Sleep(pause)
		var conn int64
		err := l.side.QueryRowContext(ctx, l.q.processes, pattern).Scan(&conn)
		if errors.Is(err, sql.ErrNoRows) {
			if i == 0 {
				continue
			}
			return
		}
		if err != nil {
			l.log.WarnContext(ctx, "dblock: cannot look for an abandoned lock wait", "error", err)
			return
		}
		if _, err := l.side.ExecContext(ctx, "KILL QUERY "+strconv.FormatInt(conn, 10)); err != nil {
			l.log.WarnContext(ctx, "dblock: cannot kill an abandoned lock wait", "connection", conn, "error", err)
			return
		}
		l.log.DebugContext(ctx, "dblock: killed an abandoned lock wait", "connection", conn)
		return
	}
}

// txPool returns the connection of the transaction tx.
func txPool(tx *gorm.DB) (gorm.ConnPool, error) {
	if tx == nil {
		return nil, fmt.Errorf("%w: nil *gorm.DB", ErrNoTransaction)
	}
	if tx.Statement == nil || tx.Statement.ConnPool == nil {
		return nil, fmt.Errorf("%w: the *gorm.DB has no connection", ErrNoTransaction)
	}
	if _, ok := tx.Statement.ConnPool.(gorm.TxCommitter); !ok {
		return nil, fmt.Errorf("%w: the *gorm.DB is not inside a transaction (start one with db.Begin or db.Transaction)", ErrNoTransaction)
	}
	return tx.Statement.ConnPool, nil
}

// joinLock takes key inside the transaction of scope, unless scope holds
// it already (reentrancy: no round trip).
func (l *Locker) joinLock(ctx context.Context, scope *txScope, key Key, lc lockConfig) error {
	if err := scope.endedErr(); err != nil {
		// A context kept past its lock (Lock.Context after Commit, or
		// context.WithoutCancel of fn's context): joining would run fn
		// without the lock.
		return fmt.Errorf("%w: %s: the transaction this context carries has ended: %w", ErrLockLost, key, err)
	}
	if scope.holds(l, key) {
		return nil
	}
	pool, err := txPool(scope.tx)
	if err != nil {
		return err
	}
	done := l.tel.startAcquire(ctx, key, lc.noWait)
	id, err := l.rowID(ctx, key)
	if err == nil {
		err = l.lockRow(ctx, pool, key, id, lc)
	}
	done(err)
	if err != nil {
		if scope.holdsAny() && isConnectionLoss(err) && !errors.Is(err, ErrLockLost) {
			// The transaction can no longer commit: the locks it already
			// holds are lost too.
			return fmt.Errorf("%w; the locks this transaction already holds cannot be vouched for (%w)", err, ErrLockLost)
		}
		return err
	}
	if !lc.fresh {
		if err := l.guardSnapshot(ctx, scope, pool); err != nil {
			return err
		}
	}
	var token int64
	if lc.fencing {
		if token, err = l.nextToken(ctx, key); err != nil {
			return err
		}
	}
	scope.add(l, key, token)
	return nil
}

// lockConfig merges the Locker's defaults and opts.
func (l *Locker) lockConfig(opts []LockOption) (lockConfig, error) {
	if len(opts) == 0 && len(l.cfg.defaults) == 0 {
		return lockConfig{lease: DefaultLease}, nil
	}
	var lc lockConfig
	if len(l.cfg.defaults) > 0 {
		if err := lc.apply(l.cfg.defaults); err != nil {
			return lc, err
		}
	}
	return lc, lc.apply(opts)
}
