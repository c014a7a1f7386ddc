package dblock

import (
	"fmt"
	"strings"
)

// effect is what a holder's statement may do to the lock's transaction,
// as far as its text tells.
type effect uint8

const (
	keeps  effect = iota // the transaction goes on
	ends                 // it commits or ends the transaction: refused
	unseen               // it may, and the text cannot tell (CALL, EXECUTE, several statements): guarded
)

// statementEffect reads a holder's statement for what it does to the
// transaction. Statements that commit implicitly (DDL, LOCK TABLES, GRANT,
// ...), end it (BEGIN, START TRANSACTION, COMMIT, ROLLBACK) or set
// autocommit end it: the server would release the lock at once and run what
// follows in autocommit, outside it. It reads words and literals without
// allocating; where the text cannot tell, it says unseen.
func statementEffect(query string) effect {
	q, _ := skipSpaceAndComments(query)
	w1, rest := firstWord(q)
	var e effect
	switch w1 {
	case "ALTER", "BACKUP", "BEGIN", "CACHE", "CHANGE", "COMMIT", "FLUSH", "GRANT", "INSTALL",
		"LOCK", "RENAME", "RESET", "REVOKE", "SHUTDOWN", "TRUNCATE", "UNINSTALL", "UNLOCK", "XA":
		e = ends
	case "ANALYZE", "CHECK", "OPTIMIZE", "REPAIR":
		// ANALYZE SELECT ... runs the statement; ... TABLE commits.
		w2, _ := nextWord(rest)
		if w2 == "TABLE" || w2 == "TABLES" || w2 == "NO_WRITE_TO_BINLOG" || w2 == "LOCAL" {
			e = ends
		}
	case "CREATE", "DROP":
		// CREATE/DROP [OR REPLACE] TEMPORARY TABLE keep the transaction,
		// when TEMPORARY is plain text (a versioned comment may hide it).
		w2, rest2, hidden := nextWordSeen(rest)
		if w2 == "OR" {
			_, rest2, _ = nextWordSeen(rest2) // REPLACE
			var h bool
			w2, _, h = nextWordSeen(rest2)
			hidden = hidden || h
		}
		if w2 != "TEMPORARY" || hidden {
			e = ends
		}
	case "START":
		w2, _ := nextWord(rest)
		if w2 == "TRANSACTION" || w2 == "SLAVE" || w2 == "REPLICA" || w2 == "ALL" {
			e = ends
		}
	case "ROLLBACK":
		// ROLLBACK [WORK] TO [SAVEPOINT] s keeps the transaction.
		w2, rest2, hidden := nextWordSeen(rest)
		if w2 == "WORK" {
			var h bool
			w2, _, h = nextWordSeen(rest2)
			hidden = hidden || h
		}
		if w2 != "TO" || hidden {
			e = ends
		}
	case "LOAD":
		if w2, _ := nextWord(rest); w2 == "INDEX" {
			e = ends
		}
	case "SET":
		e = setEffect(rest)
	case "EXECUTE":
		e = unseen
		if w2, rest2 := nextWord(rest); w2 == "IMMEDIATE" {
			if lit, ok := literal(rest2); ok {
				e = statementEffect(lit)
			}
		}
	case "PREPARE":
		// PREPARE s FROM 'COMMIT' is refused; its EXECUTE is guarded.
		_, rest2 := identifier(rest)
		if w, rest3 := nextWord(rest2); w == "FROM" {
			if lit, ok := literal(rest3); ok && statementEffect(lit) == ends {
				e = ends
			}
		}
	case "CALL":
		e = unseen
	}
	if e == keeps && moreStatements(q) {
		return unseen
	}
	return e
}

// setEffect reads SET's assignments (after the word SET): one of autocommit
// ends the transaction when it turns autocommit on, and so does SET
// PASSWORD; SET STATEMENT ... FOR s does what s does.
func setEffect(rest string) effect {
	switch w, _ := nextWord(rest); w {
	case "PASSWORD":
		return ends
	case "STATEMENT":
		if s, ok := afterFor(rest); ok {
			return statementEffect(s)
		}
		return unseen
	}
	// A system variable named autocommit, assigned: autocommit = ...,
	// SESSION autocommit, @@autocommit, @@session.autocommit (not the
	// user variable @autocommit, nor a string).
	q := rest
	for len(q) > 0 {
		switch c := q[0]; {
		case c == '\'' || c == '"' || c == '`':
			q = skipQuoted(q)
		case isLetter(c):
			n := wordLen(q)
			w := q[:n]
			user := len(rest)-len(q) >= 1 && rest[len(rest)-len(q)-1] == '@' &&
				(len(rest)-len(q) < 2 || rest[len(rest)-len(q)-2] != '@')
			q = q[n:]
			if !user && strings.EqualFold(w, "autocommit") {
				t := strings.TrimLeft(q, " \t\r\n")
				if strings.HasPrefix(t, "=") || strings.HasPrefix(t, ":=") {
					return ends
				}
			}
		case c >= '0' && c <= '9':
			q = q[wordLen(q):]
		default:
			q = q[1:]
		}
	}
	return keeps
}

// afterFor returns what follows the first FOR outside quotes in s (SET
// STATEMENT's assignments, then FOR and the statement).
func afterFor(s string) (string, bool) {
	q := s
	for len(q) > 0 {
		switch c := q[0]; {
		case c == '\'' || c == '"' || c == '`':
			q = skipQuoted(q)
		case isLetter(c):
			n := wordLen(q)
			if strings.EqualFold(q[:n], "FOR") {
				return q[n:], true
			}
			q = q[n:]
		case c >= '0' && c <= '9':
			q = q[wordLen(q):]
		default:
			q = q[1:]
		}
	}
	return "", false
}

// moreStatements reports whether q holds a second statement after a ';'
// outside quotes and comments (a DSN with multiStatements=true runs it).
func moreStatements(q string) bool {
	for len(q) > 0 {
		switch c := q[0]; {
		case c == '\'' || c == '"' || c == '`':
			q = skipQuoted(q)
		case c == ';':
			rest, _ := skipSpaceAndComments(q[1:])
			if rest != "" {
				return true
			}
			q = q[1:]
		case c == '/' && strings.HasPrefix(q, "/*") && !strings.HasPrefix(q, "/*!") && !strings.HasPrefix(q, "/*M!"),
			c == '#', c == '-' && isLineComment(q):
			q, _ = skipSpaceAndComments(q)
		default:
			q = q[1:]
		}
	}
	return false
}

// literal returns the content of the string literal q starts with (after
// white space), when it has no escapes; ok is false otherwise.
func literal(q string) (string, bool) {
	q, _ = skipSpaceAndComments(q)
	if q == "" || (q[0] != '\'' && q[0] != '"') {
		return "", false
	}
	end := strings.IndexByte(q[1:], q[0])
	if end < 0 || strings.IndexByte(q[1:1+end], '\\') >= 0 || strings.HasPrefix(q[2+end:], q[:1]) {
		return "", false
	}
	return q[1 : 1+end], true
}

// skipQuoted returns q after the quoted string, identifier or literal it
// starts with (doubled quotes and backslash escapes inside).
func skipQuoted(q string) string {
	quote := q[0]
	for i := 1; i < len(q); i++ {
		switch q[i] {
		case '\\':
			if quote != '`' {
				i++
			}
		case quote:
			if i+1 < len(q) && q[i+1] == quote {
				i++
				continue
			}
			return q[i+1:]
		}
	}
	return ""
}

// skipSpaceAndComments returns q without leading white space and comments
// (/* */, -- and #), and whether it passed an executable comment. The
// server runs what an executable comment (/*! ..., /*!50100 ..., /*M! ...)
// holds unless its version is newer than the server's: only its marker is
// skipped, and the caller treats a word it hides as uncertain.
func skipSpaceAndComments(q string) (string, bool) {
	exec := false
	for {
		q = strings.TrimLeft(q, " \t\r\n\f\v(")
		switch {
		case strings.HasPrefix(q, "/*!"), strings.HasPrefix(q, "/*M!"):
			q = strings.TrimLeft(q[strings.IndexByte(q, '!')+1:], "0123456789")
			exec = true
		case strings.HasPrefix(q, "*/") && exec:
			q = q[2:]
		case strings.HasPrefix(q, "/*"):
			i := strings.Index(q[2:], "*/")
			if i < 0 {
				return "", exec
			}
			q = q[2+i+2:]
		case strings.HasPrefix(q, "#"), isLineComment(q):
			i := strings.IndexByte(q, '\n')
			if i < 0 {
				return "", exec
			}
			q = q[i+1:]
		default:
			return q, exec
		}
	}
}

// isLineComment reports whether q starts with "--" followed by white space
// or a control character, or ends there: the server's line comment.
func isLineComment(q string) bool {
	return strings.HasPrefix(q, "--") && (len(q) == 2 || q[2] <= ' ')
}

// nextWord is firstWord after white space and comments.
func nextWord(q string) (string, string) {
	w, rest, _ := nextWordSeen(q)
	return w, rest
}

// nextWordSeen is nextWord, and whether an executable comment came first.
func nextWordSeen(q string) (string, string, bool) {
	q, exec := skipSpaceAndComments(q)
	w, rest := firstWord(q)
	return w, rest, exec
}

// identifier returns q after the identifier it starts with (after white
// space), plain or quoted.
func identifier(q string) (string, string) {
	q, _ = skipSpaceAndComments(q)
	if q != "" && q[0] == '`' {
		rest := skipQuoted(q)
		return q[:len(q)-len(rest)], rest
	}
	n := wordLen(q)
	return q[:n], q[n:]
}

// firstWord returns q's leading word when it is one of keywords,
// upper-cased, else "", and the rest of q after the word.
func firstWord(q string) (word, rest string) {
	n := wordLen(q)
	if n == 0 || n > 18 {
		return "", q[n:]
	}
	var buf [18]byte
	for i := range n {
		buf[i] = q[i] &^ 0x20 // ASCII upper case; digits and _ are not letters here
		if q[i] < 'A' {
			buf[i] = q[i]
		}
	}
	return keyword(buf[:n]), q[n:]
}

// keyword returns the string constant equal to b, or "" when b is none of
// the words statementEffect looks at: no allocation either way.
func keyword(b []byte) string {
	for _, k := range keywords {
		if string(b) == k {
			return k
		}
	}
	return ""
}

var keywords = [...]string{
	"ALL", "ALTER", "ANALYZE", "BACKUP", "BEGIN", "CACHE", "CALL", "CHANGE", "CHECK", "COMMIT", "CREATE",
	"DROP", "EXECUTE", "FLUSH", "FROM", "GRANT", "IMMEDIATE", "INDEX", "INSTALL", "LOAD", "LOCAL", "LOCK",
	"NO_WRITE_TO_BINLOG", "OPTIMIZE", "OR", "PASSWORD", "PREPARE", "RENAME", "REPAIR", "REPLACE", "REPLICA",
	"RESET", "REVOKE", "ROLLBACK", "SET", "SHUTDOWN", "SLAVE", "START", "STATEMENT", "TABLE", "TABLES",
	"TEMPORARY", "TO", "TRANSACTION", "TRUNCATE", "UNINSTALL", "UNLOCK", "WORK", "XA",
}

// wordLen returns the length of the word (letters, digits, _, $) q starts
// with.
func wordLen(q string) int {
	n := 0
	for n < len(q) && (isLetter(q[n]) || q[n] >= '0' && q[n] <= '9' || q[n] == '$') {
		n++
	}
	return n
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' }

// implicitCommitErr is the error of a statement that would end the lock's
// transaction.
func implicitCommitErr(query string) error {
	q, _ := skipSpaceAndComments(query)
	if len(q) > 40 {
		q = q[:40] + "..."
	}
	return fmt.Errorf("dblock: %q would end the lock's transaction on the server (an implicit commit) and release the lock while the holder runs: "+
		"run it outside the lock, before or after it", q)
}
