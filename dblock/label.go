package dblock

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/txlock/txlock/internal/sessions"
	"github.com/txlock/txlock/schema"
)

// maxLabelLen is the longest label, in characters: the session table's
// label column is VARCHAR(255).
const maxLabelLen = 255

// Label names the instance that holds the Locker's locks, for Holder,
// `txlock locks` and the Locker's log lines: by default "<hostname>:<pid>".
// It must be non-empty printable UTF-8, at most 255 characters. See "Who
// holds a lock" in the package documentation.
func Label(s string) Option {
	return func(c *config) error {
		if err := validLabel(s); err != nil {
			return fmt.Errorf("dblock: Label: %w", err)
		}
		c.label = s
		return nil
	}
}

func validLabel(s string) error {
	switch {
	case s == "":
		return errors.New("empty label")
	case !utf8.ValidString(s):
		return fmt.Errorf("label %q is not valid UTF-8", s)
	case utf8.RuneCountInString(s) > maxLabelLen:
		return fmt.Errorf("label of %d characters, at most %d", utf8.RuneCountInString(s), maxLabelLen)
	}
	if i := strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }); i >= 0 {
		return fmt.Errorf("label %q has a non-printable character at byte %d", s, i)
	}
	return nil
}

// defaultLabel is "<hostname>:<pid>", cut to maxLabelLen characters.
func defaultLabel() string {
	host, err := os.Hostname()
	if err != nil || validLabel(host) != nil {
		host = "unknown-host"
	}
	s := host + ":" + strconv.Itoa(os.Getpid())
	if utf8.RuneCountInString(s) > maxLabelLen {
		s = string([]rune(s)[:maxLabelLen])
	}
	return s
}

// Session rows: each connection the Locker locks on is written once to
// the session table with the Locker's label (see docs/HOLDERS.md).
const (
	// sessionRefresh is how long a connection of a caller's transaction,
	// known only by its id, counts as written: ids are reused after a
	// server restart, so the row is written again after this long.
	sessionRefresh = time.Minute
	// pruneEvery is how often at most a Locker deletes the rows of
	// connections long gone; pruneGrace keeps the rows younger than it;
	// pruneBatch bounds the rows one pass deletes.
	pruneEvery = 10 * time.Minute
	pruneGrace = time.Minute
	pruneBatch = 1000
	// sessionTimeout bounds the side pool's session work.
	sessionTimeout = 2 * time.Second
)

// sessionBook writes the label of the Locker's connections.
type sessionBook struct {
	table   string // the session table
	mariaDB bool
	upsert  string // "INSERT ... VALUES (" before the connection id
	update  string // ", label, NOW(6)) ON DUPLICATE KEY UPDATE ..."
	off     atomic.Bool
	ids     *lru[int64, int64] // connection id -> when written (Unix ns), for connections of caller's transactions
	pruned  atomic.Int64       // when the last prune began (Unix ns), or New
}

func newSessionBook(table, label string, srv server) *sessionBook {
	lit := "CONVERT(X'" + hex.EncodeToString([]byte(label)) + "' USING utf8mb4)"
	insert := "INSERT /*+ SET_VAR(innodb_lock_wait_timeout=1) */ INTO "
	if srv.mariaDB {
		insert = "SET STATEMENT innodb_lock_wait_timeout = 1 FOR INSERT INTO "
	}
	st := schema.SessionTable(table)
	b := &sessionBook{
		table:   st,
		mariaDB: srv.mariaDB,
		upsert:  insert + "`" + st + "` (conn_id, label, seen) VALUES (",
		update:  ", " + lit + ", NOW(6)) ON DUPLICATE KEY UPDATE label = " + lit + ", seen = NOW(6)",
		ids:     newLRU[int64, int64](leasedConnsTracked),
	}
	b.pruned.Store(time.Now().UnixNano()) // the first prune is pruneEvery after New
	return b
}

// labelConn writes the label of conn, a connection the Locker has not
// used yet, on conn itself in autocommit, before its transaction begins.
// Labels are best effort: a failure is logged, never returned.
func (l *Locker) labelConn(ctx context.Context, conn *sql.Conn) {
	b := l.sessions
	if b.off.Load() {
		return
	}
	_, err := conn.ExecContext(ctx, b.upsert+"CONNECTION_ID()"+b.update)
	l.labelWritten(ctx, err)
}

// labelConnID writes the label of connection id, met in a caller's
// transaction, from the side pool: a write in the caller's transaction
// would stay invisible until it commits, and roll back with it.
func (l *Locker) labelConnID(ctx context.Context, id int64) {
	b := l.sessions
	if b.off.Load() || id == 0 {
		return
	}
	now := time.Now().UnixNano()
	if at, ok := b.ids.get(id); ok && now-at < int64(sessionRefresh) {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sessionTimeout)
	defer cancel()
	_, err := l.side.ExecContext(ctx, b.upsert+strconv.FormatInt(id, 10)+b.update)
	if err == nil {
		b.ids.put(id, now)
	}
	l.labelWritten(ctx, err)
}

// labelWritten handles the outcome of a label write: a missing or
// unwritable session table turns labels off (warned once); then, at most
// every pruneEvery (the first pruneEvery after New), the rows of
// connections long gone are deleted.
func (l *Locker) labelWritten(ctx context.Context, err error) {
	b := l.sessions
	switch {
	case err == nil:
	case sessions.Missing(err) || mysqlErrorNumber(err) == erOptionPreventsStmt:
		l.sessionsOff(ctx, err)
		return
	case ctx.Err() != nil:
		return // the acquisition reports it
	default:
		l.log.WarnContext(ctx, "dblock: cannot write the label of a lock connection to the session table; Holder and `txlock locks` will not show it", "table", b.table, "error", err)
		return
	}
	now := time.Now().UnixNano()
	last := b.pruned.Load()
	if now-last < int64(pruneEvery) || !b.pruned.CompareAndSwap(last, now) {
		return
	}
	if n, err := l.pruneSessions(ctx); err != nil {
		l.log.WarnContext(ctx, "dblock: cannot delete the rows of closed connections from the session table", "table", b.table, "error", err)
	} else if n > 0 {
		l.log.DebugContext(ctx, "dblock: deleted the rows of closed connections from the session table", "table", b.table, "rows", n)
	}
}

// sessionsOff turns labels off for the Locker's life, with one warning.
func (l *Locker) sessionsOff(ctx context.Context, err error) {
	if l.sessions.off.CompareAndSwap(false, true) {
		l.log.WarnContext(ctx, "dblock: the session table is missing or read-only, so locks are taken without labels (Holder and `txlock locks` show none): "+
			"run `txlock migrate up` (or migrations.Up) to create it, then restart", "table", l.sessions.table, "error", err)
	}
}

// pruneSessions deletes (at most pruneBatch) rows of connections long
// gone: rows of a past server run, and, when the Locker's user may see
// every connection (the PROCESS privilege), rows whose connection is not
// in the process list. Rows younger than pruneGrace are kept. It reads
// first, then deletes by primary key, so that it locks only those rows.
func (l *Locker) pruneSessions(ctx context.Context) (int64, error) {
	b := l.sessions
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sessionTimeout)
	defer cancel()
	const seesAll = "EXISTS (SELECT 1 FROM information_schema.USER_PRIVILEGES WHERE PRIVILEGE_TYPE = 'PROCESS' AND GRANTEE = " +
		"CONCAT('''', LEFT(CURRENT_USER(), CHAR_LENGTH(CURRENT_USER()) - CHAR_LENGTH(SUBSTRING_INDEX(CURRENT_USER(), '@', -1)) - 1), " +
		"'''@''', SUBSTRING_INDEX(CURRENT_USER(), '@', -1), ''''))"
	old := "seen < NOW(6) - INTERVAL " + strconv.Itoa(int(pruneGrace/time.Second)) + " SECOND"
	ids, err := queryInt64s(ctx, l.side, "SELECT conn_id FROM `"+b.table+"` WHERE "+old+" AND (seen < "+sessions.ServerStart(b.mariaDB)+
		" OR (conn_id NOT IN (SELECT ID FROM information_schema.PROCESSLIST) AND "+seesAll+")) LIMIT "+strconv.Itoa(pruneBatch))
	if err != nil || len(ids) == 0 {
		return 0, err
	}
	var q strings.Builder
	q.WriteString("DELETE FROM `" + b.table + "` WHERE " + old + " AND conn_id IN (")
	for i, id := range ids {
		if i > 0 {
			q.WriteString(", ")
		}
		q.WriteString(strconv.FormatInt(id, 10))
	}
	q.WriteString(")")
	res, err := l.side.ExecContext(ctx, q.String())
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// labels returns the labels of the connections ids (those without a row
// of the server's current run have none), read from the side pool.
func (l *Locker) labels(ctx context.Context, ids []int64) (map[int64]string, error) {
	if l.sessions.off.Load() || len(ids) == 0 {
		return nil, nil
	}
	m, err := sessions.Labels(ctx, l.side, l.sessions.table, l.srv.mariaDB, ids)
	if sessions.Missing(err) {
		l.sessionsOff(ctx, err)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dblock: reading the labels of %s: %w", l.sessions.table, err)
	}
	return m, nil
}

// queryInt64s returns the first column of a query's rows.
func queryInt64s(ctx context.Context, q sessions.Queryer, query string, args ...any) ([]int64, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var v int64
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
