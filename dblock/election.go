package dblock

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/txlock/txlock/internal/sessions"
	"github.com/txlock/txlock/schema"
)

// Elections (doc.go, "Elections"; docs/ELECTION.md). A leadership is a
// server named lock (GET_LOCK) held by a connection the leadership pins:
// a metadata lock, not an InnoDB transaction, so it holds back neither
// purge nor anything else that grows. The leader's value is a committed
// row of <table>_leader that names the connection (conn_id): it is the
// leader's while IS_USED_LOCK names that connection.

// maxValueChars is the longest value a campaigner may lead with: the
// leader table's value column is VARCHAR(1024).
const maxValueChars = 1024

// maxLockName is the longest name GET_LOCK accepts (64 characters).
const maxLockName = 64

// An Election is the election of one key: processes Campaign for it, one
// leads at a time, and anyone may ask who leads (Leader) or follow the
// changes (Observe). It is a value of the Locker's, safe for concurrent
// use; the Locker's Defaults (Lease) apply to its leaderships.
type Election struct {
	l    *Locker
	key  Key
	name string // the server named lock of the election
	q    electionQueries
	err  error // why the election cannot run (nil Locker, invalid key, Galera)
}

// electionQueries are the statements of one Locker's elections.
type electionQueries struct {
	write  string // the leader's row, autocommit on the side pool
	read   string // the live leader's row: conn_id is the named lock's holder
	unname string // on a campaign's connection before its wait: a row of a past run with its id no longer names it
}

func buildElectionQueries(table, name string, mariaDB bool) electionQueries {
	t := "`" + schema.LeaderTable(table) + "`"
	// The row is written only while the writer's session holds the named
	// lock (a leader paused past its lease writes nothing), and replaces a
	// row only if that row's session no longer holds it (a leader's write
	// that arrives late never hides its successor's row), or is the
	// writer's (a connection id reused after a restart). The name is hex:
	// nothing to quote. conn_id is assigned last: the assignments before it
	// test the old one.
	dead := "IF(conn_id = VALUES(conn_id) OR NOT (IS_USED_LOCK('" + name + "') <=> conn_id), "
	return electionQueries{
		write: "INSERT INTO " + t + " (key_hash, value, token, conn_id, since) SELECT ?, ?, ?, ?, UTC_TIMESTAMP(6) FROM DUAL WHERE IS_USED_LOCK('" + name + "') = ?" +
			" ON DUPLICATE KEY UPDATE value = " + dead + "VALUES(value), value), token = " + dead + "VALUES(token), token)," +
			" since = " + dead + "VALUES(since), since), conn_id = " + dead + "VALUES(conn_id), conn_id)",
		unname: "UPDATE " + t + " SET conn_id = 0 WHERE key_hash = ? AND conn_id = CONNECTION_ID()",
		// A row of a past server run whose connection id the named lock's
		// holder has now is not its row (also unnamed by every campaign
		// before its wait).
		read: "SELECT value, token FROM " + t + " WHERE key_hash = ? AND conn_id = IS_USED_LOCK(?) AND since >= " + sessions.ServerStart(mariaDB),
	}
}

// electionLockName is the named lock of key's election on table of
// schemaName: unique per server across schemas and tables, at most 64
// characters.
func electionLockName(schemaName, table string, key Key) string {
	hash := key.hash()
	h := sha256.New()
	h.Write([]byte(schemaName))
	h.Write([]byte{0})
	h.Write([]byte(table))
	h.Write([]byte{0})
	h.Write(hash[:])
	name := "txlock:" + hex.EncodeToString(h.Sum(nil))
	return name[:min(len(name), maxLockName)]
}

// errGaleraElection refuses elections on a Galera node.
var errGaleraElection = errors.New("dblock: Election: the server is a Galera node, where GET_LOCK (the named lock a leadership holds) is local to the node and not supported by Galera: two nodes could each elect a leader; run elections on a server that is not a Galera node")

// Election returns the election of key on the Locker's database. A
// leadership holds a server named lock, not the key's row: the key is
// free for Lock. An invalid key, a nil Locker or a Galera node is
// reported by the Election's methods.
func (l *Locker) Election(key Key) *Election {
	if l == nil {
		return &Election{key: key, err: errors.New("dblock: Election of a nil *Locker")}
	}
	if err := key.Validate(); err != nil {
		return &Election{l: l, key: key, err: err}
	}
	if l.srv.galera {
		return &Election{l: l, key: key, err: errGaleraElection}
	}
	name := electionLockName(l.srv.schema, l.cfg.table, key)
	return &Election{l: l, key: key, name: name, q: buildElectionQueries(l.cfg.table, name, l.srv.mariaDB)}
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

// leaderRow is what a read of the leader table found.
type leaderRow struct {
	value string
	token int64
	ok    bool // a live leader's row
}

// readLeader reads the live leader's row on the side pool: one statement,
// autocommit, no locks.
func (e *Election) readLeader(ctx context.Context) (leaderRow, error) {
	hash := e.key.hash()
	var r leaderRow
	err := e.l.side.QueryRowContext(ctx, e.q.read, hash[:], e.name).Scan(&r.value, &r.token)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return r, nil
	case err != nil:
		return r, e.tableError("reading the leader of", withCause(ctx, err))
	}
	r.ok = true
	return r, nil
}

// tableError maps an error of a statement on the leader table.
func (e *Election) tableError(step string, err error) error {
	if mysqlErrorNumber(err) == erNoSuchTable {
		return fmt.Errorf("%w: %s %s: %s is missing (migration 00002): %w", ErrTableMissing, step, e.key, schema.LeaderTable(e.l.cfg.table), err)
	}
	return fmt.Errorf("dblock: %s %s: %w", step, e.key, err)
}

// Leader returns the value of the election's current leader, or an error
// matching ErrNoLeader when nobody leads. It runs one statement on the
// Locker's side pool and waits for nothing.
func (e *Election) Leader(ctx context.Context) (string, error) {
	if err := e.check(ctx); err != nil {
		return "", err
	}
	r, err := e.readLeader(ctx)
	if err != nil {
		return "", err
	}
	if !r.ok {
		return "", fmt.Errorf("%w: %s", ErrNoLeader, e.key)
	}
	return r.value, nil
}
