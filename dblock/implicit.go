package dblock

import (
	"fmt"
	"strings"
)

// implicitCommitErr returns an error when query would end the lock's
// transaction on the server without the keeper seeing it: a statement
// that commits implicitly (DDL, LOCK TABLES, GRANT, ...), one that ends
// the transaction (BEGIN, START TRANSACTION, COMMIT, ROLLBACK), or a SET
// of autocommit. The server would release the lock at once and run what
// follows in autocommit, outside it. Only the first statement of a
// multi-statement query is read. The check reads the first words only,
// without allocating, so it costs nothing measurable per statement.
func implicitCommitErr(query string) error {
	q := skipSpaceAndComments(query)
	w1, rest := firstWord(q)
	var ends bool
	switch w1 {
	case "ALTER", "ANALYZE", "BEGIN", "CACHE", "CHANGE", "CHECK", "COMMIT", "FLUSH", "GRANT",
		"LOCK", "OPTIMIZE", "RENAME", "REPAIR", "RESET", "REVOKE", "SHUTDOWN", "TRUNCATE", "UNLOCK", "XA":
		ends = true
	case "CREATE", "DROP":
		// CREATE/DROP TEMPORARY TABLE do not commit; CREATE OR REPLACE
		// TEMPORARY TABLE neither.
		w2, rest2 := firstWord(skipSpaceAndComments(rest))
		if w2 == "OR" {
			_, rest2 = firstWord(skipSpaceAndComments(rest2)) // REPLACE
			w2, _ = firstWord(skipSpaceAndComments(rest2))
		}
		ends = w2 != "TEMPORARY"
	case "START":
		w2, _ := firstWord(skipSpaceAndComments(rest))
		ends = w2 == "TRANSACTION" || w2 == "SLAVE" || w2 == "REPLICA"
	case "ROLLBACK":
		// ROLLBACK [WORK] TO [SAVEPOINT] s keeps the transaction.
		w2, rest2 := firstWord(skipSpaceAndComments(rest))
		if w2 == "WORK" {
			w2, _ = firstWord(skipSpaceAndComments(rest2))
		}
		ends = w2 != "TO"
	case "SET":
		ends = containsFold(rest, "autocommit") || containsFold(rest, "password")
	case "LOAD":
		w2, _ := firstWord(skipSpaceAndComments(rest))
		ends = w2 == "INDEX"
	}
	if !ends {
		return nil
	}
	if len(q) > 40 {
		q = q[:40] + "..."
	}
	return fmt.Errorf("dblock: %q would end the lock's transaction on the server (an implicit commit) and release the lock while the holder runs: "+
		"run it outside the lock, before or after it", q)
}

// skipSpaceAndComments returns q without leading white space and comments
// (/* */, -- and #). The server runs what an executable comment (/*! ...,
// /*!50100 ..., /*M! ...) holds: only its marker is skipped.
func skipSpaceAndComments(q string) string {
	for {
		q = strings.TrimLeft(q, " \t\r\n\f\v(")
		switch {
		case strings.HasPrefix(q, "/*!"), strings.HasPrefix(q, "/*M!"):
			q = strings.TrimLeft(q[strings.IndexByte(q, '!')+1:], "0123456789")
		case strings.HasPrefix(q, "/*"):
			i := strings.Index(q[2:], "*/")
			if i < 0 {
				return ""
			}
			q = q[2+i+2:]
		case strings.HasPrefix(q, "-- "), strings.HasPrefix(q, "#"):
			i := strings.IndexByte(q, '\n')
			if i < 0 {
				return ""
			}
			q = q[i+1:]
		default:
			return q
		}
	}
}

// firstWord returns q's leading word, upper-cased when it is one of the
// keywords above (ASCII letters only, at most 12), and the rest of q.
func firstWord(q string) (word, rest string) {
	n := 0
	for n < len(q) && n <= 12 && isLetter(q[n]) {
		n++
	}
	if n == 0 || n > 12 {
		return "", q[n:]
	}
	var buf [12]byte
	for i := range n {
		buf[i] = q[i] &^ 0x20 // ASCII upper case
	}
	return keyword(buf[:n]), q[n:]
}

// keyword returns the string constant equal to b, or "" when b is none of
// the words implicitCommitErr looks at: no allocation either way.
func keyword(b []byte) string {
	for _, k := range keywords {
		if string(b) == k {
			return k
		}
	}
	return ""
}

var keywords = [...]string{
	"ALTER", "ANALYZE", "BEGIN", "CACHE", "CHANGE", "CHECK", "COMMIT", "CREATE", "DROP", "FLUSH",
	"GRANT", "INDEX", "LOAD", "LOCK", "OPTIMIZE", "OR", "RENAME", "REPAIR", "REPLACE", "REPLICA", "RESET",
	"REVOKE", "ROLLBACK", "SET", "SHUTDOWN", "SLAVE", "START", "TEMPORARY", "TO", "TRANSACTION",
	"TRUNCATE", "UNLOCK", "WORK", "XA",
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' }

// containsFold reports whether s contains the lower-case ASCII word sub,
// in any case.
func containsFold(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		j := 0
		for j < len(sub) && s[i+j]|0x20 == sub[j] {
			j++
		}
		if j == len(sub) {
			return true
		}
	}
	return false
}
