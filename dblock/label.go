package dblock

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
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
// the session table with the Locker's label (see docs/HOLDERS.md), from
// the side pool and off the acquisition's path: a label is best effort,
// and its write must never hold up a lock.
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
	// sessionTimeout bounds each statement of the side pool's session
	// work; the server is also told to wait at most a second for a lock
	// (row or metadata) of the session table.
	sessionTimeout = 2 * time.Second
	// sessionBackoff is how long label writes pause after one waited out
	// its lock wait (the session table is locked).
	sessionBackoff = time.Minute
	// sessionQueue bounds the label writes waiting for the writer; more
	// are dropped (and queued again when the connection is next used).
	sessionQueue = 256
)

// sessionBook writes the label of the Locker's connections: acquisitions
// queue the ids of connections met for the first time, and one writer
// goroutine, started when there is work and gone when there is none,
// writes them from the side pool. A pool connection whose label is not
// written yet (its write failed, paused or dropped) is owed: the next
// acquisition on it queues it again, at no cost to the server.
type sessionBook struct {
	table   string // the session table
	mariaDB bool
	upsert  string             // "INSERT ... VALUES (" before the connection id
	update  string             // ", label, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE ..."
	off     atomic.Bool        // no more writes: the table is missing (missing) or the Locker closed
	missing atomic.Bool        // the session table is missing or read-only: no reads either
	ids     *lru[int64, int64] // connection id -> when written (Unix ns)
	owed    *lru[any, int64]   // driver connection -> its id, label not written yet
	owing   atomic.Bool        // owed may hold entries: the acquisitions' fast path skips it otherwise
	pruned  atomic.Int64       // when the last prune began (Unix ns), or New
	pauseTo atomic.Int64       // writes pause until then (Unix ns) after a failure

	stop   context.Context // cancelled by Close: ends the writer's statement in flight
	cancel context.CancelFunc

	mu      sync.Mutex
	queue   []labelWrite
	writing bool          // the writer goroutine runs
	idle    chan struct{} // closed when the queue is empty and the writer gone
}

func newSessionBook(table, label string, srv server) *sessionBook {
	lit := "CONVERT(X'" + hex.EncodeToString([]byte(label)) + "' USING utf8mb4)"
	insert := "INSERT /*+ SET_VAR(lock_wait_timeout=1) SET_VAR(innodb_lock_wait_timeout=1) */ INTO "
	if srv.mariaDB {
		insert = "SET STATEMENT lock_wait_timeout = 1, innodb_lock_wait_timeout = 1 FOR INSERT INTO "
	}
	st := schema.SessionTable(table)
	b := &sessionBook{
		table:   st,
		mariaDB: srv.mariaDB,
		upsert:  insert + "`" + st + "` (conn_id, label, seen) VALUES (",
		update:  ", " + lit + ", UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE label = " + lit + ", seen = UTC_TIMESTAMP(6)",
		ids:     newLRU[int64, int64](leasedConnsTracked),
		owed:    newLRU[any, int64](leasedConnsTracked),
		idle:    make(chan struct{}),
	}
	close(b.idle)
	b.stop, b.cancel = context.WithCancel(context.Background())
	b.pruned.Store(time.Now().UnixNano()) // the first prune is pruneEvery after New
	return b
}

// A labelWrite is a queued label write: the connection's id, and for a
// pool connection its driver connection (nil for a caller's).
type labelWrite struct {
	id int64
	dc any
}

// labelConn queues the label write of connection id, which an
// acquisition met, unless labels are off. A connection known only by its
// id (a caller's, dc nil) is skipped when its id was written within
// sessionRefresh (ids are reused after a server restart). A pool
// connection the Locker has just met (dc, its driver connection) is
// always written, since the id's row may be of a past server run, and is
// owed until it is (labelOwed).
func (l *Locker) labelConn(id int64, dc any) {
	b := l.sessions
	now := time.Now().UnixNano()
	if id == 0 || b.off.Load() {
		return
	}
	if dc != nil {
		b.owing.Store(true)
		b.owed.put(dc, id)
	} else if at, ok := b.ids.get(id); ok && now-at < int64(sessionRefresh) {
		return
	}
	if now < b.pauseTo.Load() {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.queue) >= sessionQueue || slices.ContainsFunc(b.queue, func(w labelWrite) bool { return w.id == id }) {
		return
	}
	b.queue = append(b.queue, labelWrite{id, dc})
	if !b.writing {
		b.writing = true
		b.idle = make(chan struct{})
		go l.writeLabels()
	}
}

// writeLabels is the writer: it writes the queued labels, then prunes
// when a prune is due, and ends when the queue is empty.
func (l *Locker) writeLabels() {
	b := l.sessions
	for {
		b.mu.Lock()
		if len(b.queue) == 0 {
			b.writing = false
			close(b.idle)
			b.mu.Unlock()
			return
		}
		w := b.queue[0]
		b.queue = b.queue[1:]
		b.mu.Unlock()
		l.writeLabel(w)
	}
}

// labelOwed queues again the label of dc, a pool connection the Locker
// uses, if it is owed (labelConn).
func (l *Locker) labelOwed(dc any) {
	if !l.sessions.owing.Load() {
		return
	}
	if id, ok := l.sessions.owed.get(dc); ok {
		l.labelConn(id, dc)
	}
}

// writeLabel writes the label of w's connection (a second time at once if
// the first failed for another reason than a lock wait: a side connection
// that died with a server restart), then prunes if due.
func (l *Locker) writeLabel(w labelWrite) {
	b := l.sessions
	if b.off.Load() || time.Now().UnixNano() < b.pauseTo.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(b.stop, sessionTimeout)
	defer cancel()
	stmt := b.upsert + strconv.FormatInt(w.id, 10) + b.update
	_, err := l.side.ExecContext(ctx, stmt)
	if err != nil && mysqlErrorNumber(err) != erLockWaitTimeout && !sessions.Missing(err) && ctx.Err() == nil {
		_, err = l.side.ExecContext(ctx, stmt)
	}
	switch {
	case err == nil:
		b.ids.put(w.id, time.Now().UnixNano())
		if w.dc != nil {
			b.owed.forget(w.dc, w.id)
			if b.owed.len() == 0 {
				b.owing.Store(false) // a put racing this sets it again after
			}
		}
	case sessions.Missing(err) || mysqlErrorNumber(err) == erOptionPreventsStmt:
		l.sessionsOff(ctx, err)
		return
	case b.off.Load():
		return // Close
	case mysqlErrorNumber(err) == erLockWaitTimeout:
		b.pauseTo.Store(time.Now().Add(sessionBackoff).UnixNano())
		l.log.Warn("dblock: the session table is locked: label writes pause for a minute (Holder and `txlock locks` show no label for the connections met meanwhile until then)",
			"table", b.table, "error", err)
		return
	default:
		l.log.Warn("dblock: cannot write the label of a lock connection to the session table; it is tried again when the connection is next used",
			"table", b.table, "error", err)
		return
	}
	now := time.Now().UnixNano()
	last := b.pruned.Load()
	if b.off.Load() || now-last < int64(pruneEvery) || !b.pruned.CompareAndSwap(last, now) {
		return
	}
	if n, err := l.pruneSessions(b.stop); err != nil {
		l.log.Warn("dblock: cannot delete the rows of closed connections from the session table", "table", b.table, "error", err)
	} else if n > 0 {
		l.log.Debug("dblock: deleted the rows of closed connections from the session table", "table", b.table, "rows", n)
	}
}

// flushLabels waits until the labels queued so far are written (or ctx
// ends): Holder reads labels after it, so that a lock this Locker just
// took shows its label.
func (l *Locker) flushLabels(ctx context.Context) {
	b := l.sessions
	b.mu.Lock()
	idle := b.idle
	b.mu.Unlock()
	select {
	case <-idle:
	case <-ctx.Done():
	}
}

// sessionsOff turns labels off for the Locker's life, with one warning.
func (l *Locker) sessionsOff(ctx context.Context, err error) {
	l.sessions.off.Store(true)
	if l.sessions.missing.CompareAndSwap(false, true) {
		l.log.WarnContext(ctx, "dblock: the session table is missing or read-only, so locks are taken without labels (Holder and `txlock locks` show none): "+
			"run `txlock migrate up` (or migrations.Up) to create it, then restart", "table", l.sessions.table, "error", err)
	}
}

// stopLabels ends the label writes for Close: queued ones are dropped,
// the one in flight is cancelled, and it returns once the writer is gone.
func (l *Locker) stopLabels() {
	l.sessions.off.Store(true)
	l.sessions.cancel()
	l.flushLabels(context.Background())
}

// pruneSessions deletes (at most pruneBatch) rows of connections long
// gone: rows of a past server run, and, when the Locker's user may see
// every connection (the PROCESS privilege), rows whose connection is not
// in the process list. Rows younger than pruneGrace are kept. It reads
// first, then deletes by primary key, so that it locks only those rows.
func (l *Locker) pruneSessions(ctx context.Context) (int64, error) {
	b := l.sessions
	ctx, cancel := context.WithTimeout(ctx, sessionTimeout)
	defer cancel()
	const seesAll = "EXISTS (SELECT 1 FROM information_schema.USER_PRIVILEGES WHERE PRIVILEGE_TYPE = 'PROCESS' AND GRANTEE = " +
		"CONCAT('''', LEFT(CURRENT_USER(), CHAR_LENGTH(CURRENT_USER()) - CHAR_LENGTH(SUBSTRING_INDEX(CURRENT_USER(), '@', -1)) - 1), " +
		"'''@''', SUBSTRING_INDEX(CURRENT_USER(), '@', -1), ''''))"
	old := "seen < UTC_TIMESTAMP(6) - INTERVAL " + strconv.Itoa(int(pruneGrace/time.Second)) + " SECOND"
	ids, err := queryInt64s(ctx, l.side, "SELECT conn_id FROM `"+b.table+"` WHERE "+old+" AND (seen < "+sessions.LabelsSince(b.mariaDB)+
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
	if l.sessions.missing.Load() || len(ids) == 0 {
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
