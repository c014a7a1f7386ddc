package lockload

import (
	"context"
	"errors"
	"fmt"
	"testing"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/linearize"
)

// TestCommitOutcome: only a server rollback or refusal is certain; every
// other error after the work finished leaves the commit in doubt.
func TestCommitOutcome(t *testing.T) {
	for _, c := range []struct {
		err  error
		want linearize.Outcome
	}{
		{nil, linearize.Committed},
		{fmt.Errorf("commit: %w: %w", dblock.ErrLockLost, dblock.ErrDeadlock), linearize.NotCommitted},
		{fmt.Errorf("x: %w", dblock.ErrStaleSnapshot), linearize.NotCommitted},
		{&gomysql.MySQLError{Number: 1213}, linearize.NotCommitted},
		{fmt.Errorf("commit: %w", &gomysql.MySQLError{Number: 1020}), linearize.NotCommitted},
		{fmt.Errorf("%w: commit failed, writes not committed: %w", dblock.ErrLockLost, gomysql.ErrInvalidConn), linearize.Unknown},
		{context.DeadlineExceeded, linearize.Unknown},
		{&gomysql.MySQLError{Number: 1927}, linearize.Unknown},
		{errors.New("anything"), linearize.Unknown},
	} {
		if got := CommitOutcome(c.err); got != c.want {
			t.Errorf("CommitOutcome(%v) = %s, want %s", c.err, got, c.want)
		}
	}
}

// TestLabel: errors are tallied by the first sentinel they match, then by
// server error number, context or connection failure.
func TestLabel(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{nil, "ok"},
		{fmt.Errorf("%w: %w", dblock.ErrNotAcquired, &gomysql.MySQLError{Number: 1205}), "ErrNotAcquired"},
		{fmt.Errorf("%w: %w", dblock.ErrLockLost, dblock.ErrDeadlock), "ErrDeadlock"},
		{fmt.Errorf("%w: x", dblock.ErrHierarchyChanged), "ErrHierarchyChanged"},
		{&gomysql.MySQLError{Number: 1020}, "error 1020"},
		{fmt.Errorf("x: %w", context.Canceled), "cancelled"},
		{gomysql.ErrInvalidConn, "connection"},
		{errors.New("?"), "other"},
	} {
		if got := Label(c.err); got != c.want {
			t.Errorf("Label(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

// TestStatsLines: a child's tallies printed with Lines and parsed back add
// up in the parent.
func TestStatsLines(t *testing.T) {
	var child, parent Stats
	child.Add(Do, linearize.Committed, nil)
	child.Add(Do, linearize.Committed, nil)
	child.Add(LockTx, linearize.NotCommitted, &gomysql.MySQLError{Number: 1020})
	parent.Add(Do, linearize.Unknown, gomysql.ErrInvalidConn)
	for _, line := range child.Lines() {
		if !parent.Parse(line) {
			t.Fatalf("Parse(%q) = false", line)
		}
	}
	if parent.Parse("OP {}") || parent.Parse("TALLY outcome x\tnotanumber") {
		t.Error("Parse accepted a line that is not a tally")
	}
	if got := parent.Count(Do, linearize.Committed); got != 2 {
		t.Errorf("Do committed = %d, want 2", got)
	}
	if got := parent.Labels(linearize.NotCommitted, "error 1020"); got != 1 {
		t.Errorf("not committed 1020 = %d, want 1", got)
	}
	if got := parent.Examples()["connection"]; got == "" {
		t.Errorf("no example of a connection error: %v", parent.Examples())
	}
	t.Log(&parent)
}
