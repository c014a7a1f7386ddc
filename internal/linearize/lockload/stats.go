package lockload

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/linearize"
)

// mysqlNumber returns the server error number err wraps, or 0.
func mysqlNumber(err error) uint16 {
	var me *gomysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}

// Label names the kind of err for tallies: "ok", the first library
// sentinel it matches, a context error, a server error number, a
// connection failure, or "other".
func Label(err error) string {
	if err == nil {
		return "ok"
	}
	switch {
	case mysqlNumber(err) == 1305:
		// Galera multi-writer: the savepoint that marks the lock's
		// transaction was gone at COMMIT: an abort nobody was told of.
		return "ErrDeadlock (unreported abort)"
	case strings.Contains(err.Error(), "GaleraMultiWriter: a lock in a transaction of yours"):
		return "refused (GaleraMultiWriter)"
	}
	for _, s := range []struct {
		err  error
		name string
	}{
		{dblock.ErrNotAcquired, "ErrNotAcquired"},
		{dblock.ErrStaleSnapshot, "ErrStaleSnapshot"},
		{dblock.ErrNotPrimary, "ErrNotPrimary"},
		{dblock.ErrDeadlock, "ErrDeadlock"},
		{dblock.ErrLockLost, "ErrLockLost"},
		{dblock.ErrHierarchyChanged, "ErrHierarchyChanged"},
		{dblock.ErrUpgrade, "ErrUpgrade"},
		{dblock.ErrPermits, "ErrPermits"},
	} {
		if errors.Is(err, s.err) {
			return s.name
		}
	}
	if n := mysqlNumber(err); n != 0 {
		return "error " + strconv.Itoa(int(n))
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	case errors.Is(err, driver.ErrBadConn), errors.Is(err, gomysql.ErrInvalidConn):
		return "connection"
	}
	return "other"
}

// Stats tallies operations by path and outcome, and errors by label, from
// many goroutines.
type Stats struct {
	mu       sync.Mutex
	outcomes map[string]int    // path + "/" + outcome
	labels   map[string]int    // outcome + ": " + label
	examples map[string]string // label -> the first error seen
}

// Add counts one operation (of several counters, once) that returned err.
func (s *Stats) Add(path Path, o linearize.Outcome, err error) {
	label := Label(err)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.init()
	s.outcomes[string(path)+"/"+o.String()]++
	s.labels[o.String()+": "+label]++
	if _, ok := s.examples[label]; !ok && err != nil {
		s.examples[label] = err.Error()
	}
}

func (s *Stats) init() {
	if s.outcomes == nil {
		s.outcomes, s.labels, s.examples = make(map[string]int), make(map[string]int), make(map[string]string)
	}
}

// Examples returns the first error seen of each label.
func (s *Stats) Examples() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.examples)
}

// Count returns how many operations of path had outcome o.
func (s *Stats) Count(path Path, o linearize.Outcome) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.outcomes[string(path)+"/"+o.String()]
}

// Labels returns how many operations had outcome o with label.
func (s *Stats) Labels(o linearize.Outcome, label string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.labels[o.String()+": "+label]
}

// Lines returns the tallies, one "TALLY kind key n" line each, for a child
// process to print and its parent to Parse.
func (s *Stats) Lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for k, n := range s.outcomes {
		out = append(out, fmt.Sprintf("TALLY outcome %s\t%d", k, n))
	}
	for k, n := range s.labels {
		out = append(out, fmt.Sprintf("TALLY label %s\t%d", k, n))
	}
	slices.Sort(out)
	return out
}

// Parse adds a line of Lines to s; it reports whether the line was one.
func (s *Stats) Parse(line string) bool {
	rest, ok := strings.CutPrefix(line, "TALLY ")
	if !ok {
		return false
	}
	kind, rest, _ := strings.Cut(rest, " ")
	key, num, _ := strings.Cut(rest, "\t")
	n, err := strconv.Atoi(num)
	if err != nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.init()
	switch kind {
	case "outcome":
		s.outcomes[key] += n
	case "label":
		s.labels[key] += n
	default:
		return false
	}
	return true
}

// String formats the tallies for logs: per path its outcomes, then the
// errors by outcome and label.
func (s *Stats) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	keys := func(m map[string]int) []string {
		ks := make([]string, 0, len(m))
		for k := range m {
			ks = append(ks, k)
		}
		slices.Sort(ks)
		return ks
	}
	b.WriteString("by path:")
	for _, k := range keys(s.outcomes) {
		fmt.Fprintf(&b, " %s=%d", k, s.outcomes[k])
	}
	b.WriteString("; by outcome and error:")
	for _, k := range keys(s.labels) {
		fmt.Fprintf(&b, " [%s]=%d", k, s.labels[k])
	}
	return b.String()
}
