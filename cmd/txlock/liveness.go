package main

import (
	"strconv"
	"strings"
)

// What the live process list proves about MariaDB's cached lock views.
//
// INNODB_TRX, INNODB_LOCKS and INNODB_LOCK_WAITS are a cache that can be
// older than the moment it is read, by far when other clients keep reading
// it; PROCESSLIST is live. Two facts of PROCESSLIST (measured on MariaDB
// 10.11) tie a cached holder to the present:
//
//   - every statement a connection runs gets a new QUERY_ID, BEGIN and
//     COMMIT included, and a connection can only end its transaction with a
//     statement (or by ending the connection);
//   - COMMAND is "Sleep" between statements and stays as it is while one
//     statement runs.
//
// So a connection that PROCESSLIST shows with the same QUERY_ID and
// COMMAND at two moments ran no statement in between and did not finish
// the one it was running (which, in autocommit, commits): it was in one
// transaction all along. If a cache fill made between those two moments
// shows it holding a row, it still held that row at the second moment.
// A fill is known to be made after a moment when it shows a transaction
// that began after that moment (see readCache, and identifyHolder's probe).

// sameTransaction reports whether a connection seen as before, then as
// after, provably stayed in one transaction in between (see above). A
// connection missing from either read has a zero QUERY_ID: not proven.
func sameTransaction(before, after procInfo) bool {
	return before.queryID != 0 && before.queryID == after.queryID && before.cmd == after.cmd
}

// killIfUnchangedSQL is one MariaDB statement (a compound statement) that
// kills connection conn only if PROCESSLIST still shows it as was (same
// QUERY_ID and COMMAND), and returns 1 if it did, 0 if not. The check and
// the KILL run in the server one after the other, with no round trip to
// this client between them: to be killed after moving on, the connection
// would have to commit, hear back and start new work in the gap between
// two statements of one compound statement. ok is false when was cannot be
// checked this way.
func killIfUnchangedSQL(conn int64, was procInfo) (q string, ok bool) {
	if was.queryID == 0 || !isWord(was.cmd) {
		return "", false
	}
	id := strconv.FormatInt(conn, 10)
	return "BEGIN NOT ATOMIC DECLARE q BIGINT UNSIGNED DEFAULT NULL; " +
		"SELECT QUERY_ID INTO q FROM information_schema.PROCESSLIST WHERE ID = " + id +
		" AND QUERY_ID = " + strconv.FormatInt(was.queryID, 10) + " AND COMMAND = '" + was.cmd + "'; " +
		"IF q IS NOT NULL THEN KILL CONNECTION " + id + "; END IF; " +
		"SELECT q IS NOT NULL; END", true
}

// isWord reports whether s is a PROCESSLIST command name ("Sleep",
// "Query", "Binlog Dump"): letters and spaces only, safe to quote.
func isWord(s string) bool {
	return s != "" && strings.Trim(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz ") == ""
}
