package dblock

import (
	"encoding/hex"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/txlock/txlock/schema"
)

// queries holds the statements of one Locker, built once from its table
// name (validated by Table, so it cannot inject SQL).
type queries struct {
	selectRow string // a key's row id by hash, autocommit
	insertRow string // create a key's row, autocommit
	rowExists string // whether row id of a hash exists, autocommit
	table     string // "`t`", for the locking read
	processes string // find a tagged waiting statement
	bumpFence string // take the next fencing token, autocommit
	bumpCheck string // bump a stale-snapshot check's counter without waiting (MariaDB)
	readFence string // confirm tokens in the transaction: "... WHERE key_hash IN ("
	// checkFence is readFence that also fails if the transaction's
	// snapshot predates the bumps.
	checkFence string
	touchFrom  string // Galera multi-writer: write the locked row, before its id
	// permitName, selectPermits and insertPermit are the permit table's
	// name and statements (permits.go).
	permitName, selectPermits, insertPermit string
	// sessionVars are the session variables that bound an idle
	// transaction; all are set to the lease (MariaDB uses the read-only
	// or write one, when set, ahead of idle_transaction_timeout).
	sessionVars []string
}

func buildQueries(table string, srv server) queries {
	t := "`" + table + "`"
	insertWait := ""
	// A bump waits at most a second: only the key's holder bumps its
	// counter, so a wait means a transaction of this process holds the
	// counter's row (a second read of it), which would never let go.
	bumpInsert := "INSERT /*+ SET_VAR(innodb_lock_wait_timeout=1) */ INTO "
	processes := "SELECT ID, 0 FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND INFO LIKE ?"
	sessionVars := []string{"wait_timeout"}
	readFence := "SELECT key_hash, token FROM `" + schema.FenceTable(table) + "` WHERE key_hash IN ("
	if srv.mariaDB {
		insertWait = "SET STATEMENT innodb_lock_wait_timeout = 1 FOR "
		bumpInsert = insertWait + "INSERT INTO "
		processes = "SELECT ID, QUERY_ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND INFO LIKE ?"
		sessionVars = []string{"idle_transaction_timeout", "idle_readonly_transaction_timeout", "idle_write_transaction_timeout"}
	}
	checkFence := readFence
	if srv.snapshotIsolation {
		// A locking read of a row changed after the transaction's snapshot
		// fails with 1020: a transaction that read before its lock is
		// caught here, and no snapshot is created when it has none.
		checkFence = "SET STATEMENT innodb_snapshot_isolation = ON FOR " + readFence
	}
	permitName, selectPermits, insertPermit := permitQueries(schema.PermitTable(table))
	insertPermit = insertWait + insertPermit // MariaDB: at most 1 s behind a gap lock
	return queries{
		permitName:    permitName,
		selectPermits: selectPermits,
		insertPermit:  insertPermit,
		selectRow:     "SELECT id FROM " + t + " WHERE key_hash = ?",
		insertRow:     insertWait + "INSERT IGNORE INTO " + t + " (key_hash, resource, operation, method, user_id, is_global) VALUES (?, ?, ?, ?, ?, ?)",
		rowExists:     "SELECT 1 FROM " + t + " WHERE id = ? AND key_hash = ?",
		table:         t,
		processes:     processes,
		touchFrom:     "UPDATE " + t + " SET updated_at = GREATEST(NOW(6), updated_at + INTERVAL 1 MICROSECOND) WHERE id = ",
		sessionVars:   sessionVars,
		readFence:     readFence,
		checkFence:    checkFence,
		bumpFence: bumpInsert + "`" + schema.FenceTable(table) + "` (key_hash, token) VALUES (?, LAST_INSERT_ID(1))" +
			" ON DUPLICATE KEY UPDATE token = LAST_INSERT_ID(token + 1)",
		// Only MariaDB has the check (innodb_snapshot_isolation); a lock
		// wait timeout of 0 answers a held row at once.
		bumpCheck: "SET STATEMENT innodb_lock_wait_timeout = 0 FOR INSERT INTO `" + schema.FenceTable(table) + "` (key_hash, token) VALUES (?, LAST_INSERT_ID(1))" +
			" ON DUPLICATE KEY UPDATE token = LAST_INSERT_ID(token + 1)",
	}
}

// leaseAssignments returns the assignments that set every idle bound of
// a session to secs: "v1 = secs, v2 = secs".
func (q queries) leaseAssignments(secs int) string {
	var b strings.Builder
	for i, v := range q.sessionVars {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(v)
		b.WriteString(" = ")
		b.WriteString(strconv.Itoa(secs))
	}
	return b.String()
}

// leaseStatement sets every idle bound of a session to secs.
func (q queries) leaseStatement(secs int) string {
	return "SET SESSION " + q.leaseAssignments(secs)
}

// lockRead describes one locking read of a key's row.
type lockRead struct {
	lockTarget               // the rows it locks
	hash       [32]byte      // the key's (not a group's)
	tag        uint64        // marks the statement so that it can be found in the process list; 0: none
	wait       time.Duration // > 0: the server bounds the wait (MariaDB)
	skip       bool          // do not wait: a zero lock-wait timeout (refuseAtOnce), else SKIP LOCKED
	shared     bool          // a shared lock (LOCK IN SHARE MODE, FOR SHARE), not FOR UPDATE
	session    bool          // also read the session's idle bounds
	inTx       bool          // also read whether the session is in a transaction (MariaDB)
	connID     bool          // also read CONNECTION_ID() (a caller's transaction: label.go)
}

// appendLockRead appends the locking read r to buf: the row by id and key
// hash (a primary-key lookup that cannot match another key's row after ids
// were reused), FOR UPDATE or, shared, LOCK IN SHARE MODE (MariaDB) or
// FOR SHARE (MySQL). It reads the row's id and its hierarchy setting; a
// group read counts its rows and reads the least and greatest setting.
func (l *Locker) appendLockRead(buf []byte, r lockRead) []byte {
	if l.refuseAtOnce(r) {
		// A held row is answered with 1205 at once (no wait), which rolls
		// back the statement only (innodb_rollback_on_timeout is OFF) and
		// leaves no lock behind; SKIP LOCKED would leave a gap lock after
		// a skipped row, which for the table's newest row blocks every
		// new key's row until the transaction ends.
		buf = append(buf, "SET STATEMENT innodb_lock_wait_timeout=0 FOR "...)
	}
	if l.srv.mariaDB && r.wait > 0 && !r.skip {
		// max_statement_time takes fractions of a second (innodb_lock_wait_timeout
		// and WAIT n take whole seconds only); the lock-wait timeout is set
		// above it so that the statement timeout is the one that fires: it
		// ends the statement, never the transaction.
		buf = append(buf, "SET STATEMENT max_statement_time="...)
		buf = strconv.AppendFloat(buf, r.wait.Seconds(), 'f', 6, 64)
		buf = append(buf, ", innodb_lock_wait_timeout="...)
		buf = strconv.AppendInt(buf, int64(math.Ceil(r.wait.Seconds()))+1, 10)
		buf = append(buf, " FOR "...)
	}
	buf = append(buf, "SELECT "...)
	if r.tag != 0 {
		buf = append(buf, "/*"...)
		buf = append(buf, l.marker...)
		buf = strconv.AppendUint(buf, r.tag, 10)
		buf = append(buf, "*/ "...)
	}
	if r.group != nil {
		buf = append(buf, "COUNT(*), MIN(hierarchy), MAX(hierarchy)"...)
	} else {
		buf = append(buf, "id, hierarchy"...)
	}
	if r.session {
		for _, v := range l.q.sessionVars {
			buf = append(buf, ", @@session."...)
			buf = append(buf, v...)
		}
	}
	if r.inTx {
		buf = append(buf, ", @@in_transaction"...)
	}
	if r.connID {
		buf = append(buf, ", CONNECTION_ID()"...)
	}
	buf = append(buf, " FROM "...)
	switch {
	case r.group != nil:
		// By primary key, whatever the optimizer thinks of key_hash's
		// unique index: the rows are locked in id order, the one order
		// every acquisition follows (hierarchy.go), and no other index
		// record or gap is locked.
		buf = append(buf, l.q.table...)
		buf = append(buf, " FORCE INDEX (PRIMARY) WHERE id IN ("...)
		for i, n := range r.group {
			if i > 0 {
				buf = append(buf, ", "...)
			}
			buf = strconv.AppendInt(buf, n.id, 10)
		}
		buf = append(buf, ") AND key_hash IN ("...)
		for i, n := range r.group {
			if i > 0 {
				buf = append(buf, ", "...)
			}
			h := n.key.hash()
			buf = append(buf, "X'"...)
			buf = hex.AppendEncode(buf, h[:])
			buf = append(buf, '\'')
		}
		buf = append(buf, ')')
	case !r.permit:
		buf = append(buf, l.q.table...)
		buf = append(buf, " WHERE id = "...)
		buf = strconv.AppendInt(buf, r.id, 10)
	default:
		buf = append(buf, '`')
		buf = append(buf, l.q.permitName...)
		buf = append(buf, "` FORCE INDEX (PRIMARY) WHERE id IN ("...)
		for i, id := range r.ids {
			if i > 0 {
				buf = append(buf, ", "...)
			}
			buf = strconv.AppendInt(buf, id, 10)
		}
		buf = append(buf, ')')
	}
	if r.group == nil {
		buf = append(buf, " AND key_hash = X'"...)
		buf = hex.AppendEncode(buf, r.hash[:])
		buf = append(buf, '\'')
	}
	if r.any {
		buf = append(buf, " LIMIT 1"...)
	}
	switch {
	case !r.shared:
		buf = append(buf, " FOR UPDATE"...)
	case l.srv.mariaDB:
		buf = append(buf, " LOCK IN SHARE MODE"...)
	default:
		buf = append(buf, " FOR SHARE"...)
	}
	if r.skip && !l.refuseAtOnce(r) {
		// Not NOWAIT: MariaDB answers NOWAIT with 1205, which
		// innodb_rollback_on_timeout turns into a rollback of the whole
		// transaction (MySQL 8's own NOWAIT error is untested here). A
		// held row is skipped instead, and told apart from a missing one
		// afterwards.
		buf = append(buf, " SKIP LOCKED"...)
	}
	return buf
}

// refuseAtOnce reports whether the read r, which does not wait, finds a
// held row with a lock-wait timeout of zero rather than SKIP LOCKED: on
// MariaDB with innodb_rollback_on_timeout OFF, for a key's row or a group
// (a permit of several, any free one, is found with SKIP LOCKED: its
// table keeps a spacer row after the permits).
func (l *Locker) refuseAtOnce(r lockRead) bool {
	return r.skip && !r.any && l.srv.mariaDB && !l.srv.rollbackOnTimeout
}

// appendFenceRead appends hashes as hex literals, comma separated, then
// ")" and, with lock, the locking clause of the fence read.
func appendFenceRead(buf []byte, prefix string, hashes [][]byte, lock bool) []byte {
	buf = append(buf, prefix...)
	for i, h := range hashes {
		if i > 0 {
			buf = append(buf, ", "...)
		}
		buf = append(buf, "X'"...)
		buf = hex.AppendEncode(buf, h)
		buf = append(buf, '\'')
	}
	if !lock {
		return append(buf, ')')
	}
	return append(buf, ") LOCK IN SHARE MODE"...)
}
