package dblock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/txlock/txlock/schema"
)

// Elections (doc.go, "Elections"; docs/ELECTION.md). A leadership is a Lock
// of the election's key, taken through the one acquisition pipeline with
// Fencing, whose transaction also writes the leader's row (value, token,
// since) in <table>_leader and never commits: the row exists for others,
// read uncommitted, exactly as long as the transaction lives.

// maxValueChars is the longest value a campaigner may lead with: the
// leader table's value column is VARCHAR(1024).
const maxValueChars = 1024

// An Election is the election of one key: processes Campaign for it, one
// leads at a time, and anyone may ask who leads (Leader) or follow the
// changes (Observe). It is a value of the Locker's, safe for concurrent
// use; the Locker's Defaults (Lease) apply to its leaderships.
type Election struct {
	l   *Locker
	key Key
	q   electionQueries
	err error // why the election cannot run (nil Locker, invalid key)
}

// electionQueries are the statements of one Locker's elections.
type electionQueries struct {
	write string // the leader's row, in the leadership's transaction
	read  string // the leader's row, read uncommitted
	probe string // whether the row is free (committed: a defect), SKIP LOCKED
	// wait waits until the leader's transaction ends (after the tag).
	// Exclusive: InnoDB turns a waiting shared lock into a gap lock when
	// the leader's rollback removes the row, which would make the next
	// leader's insert wait for the observer's transaction; under READ
	// UNCOMMITTED an exclusive one is dropped instead.
	wait     string
	waitHead string // before the tag: the per-statement lock-wait bound
	stale    string // a committed row (a defect), autocommit
	repair   string // delete it, autocommit
}

func buildElectionQueries(table string, mariaDB bool) electionQueries {
	t := "`" + schema.LeaderTable(table) + "`"
	share := " FOR SHARE"
	head := "SELECT /*+ SET_VAR(innodb_lock_wait_timeout=" + strconv.Itoa(observeWaitSecs) + ") */ "
	if mariaDB {
		// MariaDB 10.11 has no FOR SHARE; LOCK IN SHARE MODE takes SKIP
		// LOCKED there (MySQL gives SKIP LOCKED to FOR SHARE only).
		share = " LOCK IN SHARE MODE"
		head = "SET STATEMENT innodb_lock_wait_timeout=" + strconv.Itoa(observeWaitSecs) + " FOR SELECT "
	}
	return electionQueries{
		write:    "INSERT INTO " + t + " (key_hash, value, token, since) VALUES (?, ?, ?, NOW(6))",
		read:     "SELECT value, token FROM " + t + " WHERE key_hash = ?",
		probe:    "SELECT token FROM " + t + " WHERE key_hash = ?" + share + " SKIP LOCKED",
		waitHead: head,
		wait:     "token FROM " + t + " WHERE key_hash = ? FOR UPDATE",
		stale:    "SELECT token FROM " + t + " WHERE key_hash = ?",
		repair:   "DELETE FROM " + t + " WHERE key_hash = ? AND token = ?",
	}
}

// Election returns the election of key on the Locker's database. Its
// leaders hold key like any Lock of it: use a key of its own for an
// election. An invalid key or a nil Locker is reported by the Election's
// methods.
func (l *Locker) Election(key Key) *Election {
	if l == nil {
		return &Election{key: key, err: errors.New("dblock: Election of a nil *Locker")}
	}
	if err := key.Validate(); err != nil {
		return &Election{l: l, key: key, err: err}
	}
	return &Election{l: l, key: key, q: buildElectionQueries(l.cfg.table, l.srv.mariaDB)}
}

// check validates the receiver and ctx of an Election method.
func (e *Election) check(ctx context.Context) error {
	switch {
	case e == nil:
		return errors.New("dblock: nil *Election (make one with Locker.Election)")
	case e.err != nil:
		return e.err
	case ctx == nil:
		return errors.New("dblock: nil context")
	case e.l.closed.Load():
		return errClosed
	}
	return nil
}

// checkValue refuses a value the leader table cannot hold as it is.
func checkValue(value string) error {
	if !utf8.ValidString(value) {
		return errors.New("dblock: Campaign: the value is not valid UTF-8: the leader table stores text (encode binary values, e.g. base64)")
	}
	if n := utf8.RuneCountInString(value); n > maxValueChars {
		return fmt.Errorf("dblock: Campaign: the value is %d characters long, at most %d fit the leader table: campaign with an address or an id, not a document", n, maxValueChars)
	}
	return nil
}

// Campaign waits until the caller leads the election, then returns its
// Leadership, led with value (at most 1024 characters of UTF-8). ctx
// bounds the wait only, as in etcd: the leadership lasts until Resign, a
// loss (Done), or until the Leadership is dropped unreachable (then it is
// resigned, with a warning logged).
func (e *Election) Campaign(ctx context.Context, value string) (*Leadership, error) {
	if err := e.check(ctx); err != nil {
		return nil, err
	}
	if err := checkValue(value); err != nil {
		return nil, err
	}
	lc, err := e.l.lockConfig(nil)
	if err != nil {
		return nil, err
	}
	// Whatever the Defaults say about waiting: a campaign waits as long as
	// ctx allows, and the token is the leadership's.
	lc.fencing, lc.noWait, lc.wait = true, false, 0
	// The lock's transaction lives on a context that ctx ends only until
	// the campaign returns.
	wctx, stop := context.WithCancelCause(context.WithoutCancel(ctx))
	unhook := context.AfterFunc(ctx, func() { stop(context.Cause(ctx)) })
	ld, err := e.campaign(wctx, lc, value)
	if !unhook() && ld != nil {
		// ctx ended as the campaign won: the caller has gone.
		_ = ld.lk.Rollback()
		stop(nil)
		return nil, fmt.Errorf("dblock: campaigning for %s: %w", e.key, context.Cause(ctx))
	}
	if err != nil {
		stop(nil)
		return nil, err
	}
	ld.stop = stop
	return ld, nil
}

// campaign is Campaign's loop on wctx.
func (e *Election) campaign(wctx context.Context, lc lockConfig, value string) (*Leadership, error) {
	keys := [1]Key{e.key}
	for {
		lk, err := e.l.begin(wctx, keys[:], lc, true)
		if errors.Is(err, ErrNotAcquired) && wctx.Err() == nil {
			continue // the server's innodb_lock_wait_timeout ended the wait: wait again
		}
		if err != nil {
			return nil, fmt.Errorf("dblock: campaigning for %s: %w", e.key, err)
		}
		if err := e.lead(lk, value); err != nil {
			_ = lk.Rollback()
			return nil, err
		}
		return &Leadership{lk: lk, key: e.key}, nil
	}
}

// lead writes the leader's row in the transaction of lk, which holds the
// election's key, after removing a committed row (a defect: no leader
// ever commits), which would otherwise be taken for a leader when the
// transaction ends.
func (e *Election) lead(lk *Lock, value string) error {
	h := lk.h
	hash := e.key.hash()
	var stale int64
	switch err := e.l.side.QueryRowContext(h.ctx, e.q.stale, hash[:]).Scan(&stale); {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return e.leadError("looking for a committed leader row", err)
	default:
		// Only the key's holder writes the row, and this transaction
		// holds the key: the row a plain read sees was committed.
		if _, err := e.l.side.ExecContext(h.ctx, e.q.repair, hash[:], stale); err != nil {
			return e.leadError("deleting a committed leader row", err)
		}
		e.l.log.Warn("dblock: deleted a committed leader row (something committed a leader's transaction, or wrote the table)",
			"granularity", e.key.granularity(), "token", stale)
	}
	if _, err := h.keeper.exec(h.ctx, e.q.write, hash[:], value, lk.token); err != nil {
		return e.leadError("writing the leader row", err)
	}
	return nil
}

// leadError maps an error of writing the leader's row.
func (e *Election) leadError(step string, err error) error {
	table := schema.LeaderTable(e.l.cfg.table)
	switch mysqlErrorNumber(err) {
	case erNoSuchTable:
		return fmt.Errorf("%w: campaigning for %s: %s is missing (migration 00002): %w", ErrTableMissing, e.key, table, err)
	case erDupEntry:
		return fmt.Errorf("dblock: campaigning for %s: %s: a leader row was committed meanwhile (does something else write %s?): %w", e.key, step, table, err)
	}
	return fmt.Errorf("dblock: campaigning for %s: %s in %s: %w", e.key, step, table, err)
}

// leaderRow is what a read of the leader table found.
type leaderRow struct {
	value string
	token int64
	ok    bool // a live leader's row
}

// readLeader reads the leader's row in tx (READ UNCOMMITTED: the row is
// never committed). A row that a SKIP LOCKED read can take belongs to no
// live transaction: it was committed (a defect Campaign repairs) and is
// not a leader.
func (e *Election) readLeader(ctx context.Context, tx *sql.Tx) (leaderRow, error) {
	hash := e.key.hash()
	var r leaderRow
	err := tx.QueryRowContext(ctx, e.q.read, hash[:]).Scan(&r.value, &r.token)
	if errors.Is(err, sql.ErrNoRows) {
		return r, nil
	}
	if err != nil {
		return r, e.readError(err)
	}
	var free int64
	switch err := tx.QueryRowContext(ctx, e.q.probe, hash[:]).Scan(&free); {
	case errors.Is(err, sql.ErrNoRows):
		r.ok = true // held: the leader's transaction is alive
	case err != nil:
		return r, e.readError(err)
	}
	return r, nil
}

// readError maps an error of reading the leader table.
func (e *Election) readError(err error) error {
	if mysqlErrorNumber(err) == erNoSuchTable {
		return fmt.Errorf("%w: reading the leader of %s: %s is missing (migration 00002): %w", ErrTableMissing, e.key, schema.LeaderTable(e.l.cfg.table), err)
	}
	return fmt.Errorf("dblock: reading the leader of %s: %w", e.key, err)
}

// uncommitted begins the READ UNCOMMITTED transaction the leader's row is
// read in: read-only, unless it is to wait on the row (Observe). It takes
// no snapshot.
func uncommitted(ctx context.Context, db *sql.DB, readOnly bool) (*sql.Tx, error) {
	return db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadUncommitted, ReadOnly: readOnly})
}

// Leader returns the value of the election's current leader, or an error
// matching ErrNoLeader when nobody leads. It reads the leader's row on
// the Locker's side pool (four short statements) and waits for nothing.
func (e *Election) Leader(ctx context.Context) (string, error) {
	if err := e.check(ctx); err != nil {
		return "", err
	}
	tx, err := uncommitted(ctx, e.l.side, true)
	if err != nil {
		return "", fmt.Errorf("dblock: reading the leader of %s: %w", e.key, withCause(ctx, err))
	}
	defer tx.Rollback()
	r, err := e.readLeader(ctx, tx)
	if err != nil {
		return "", withCause(ctx, err)
	}
	if !r.ok {
		return "", fmt.Errorf("%w: %s", ErrNoLeader, e.key)
	}
	return r.value, nil
}
