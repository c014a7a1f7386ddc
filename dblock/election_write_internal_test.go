package dblock

// The leader row's write against the real server: it writes nothing for a
// session that does not hold the named lock (a leader paused past its
// lease), and never replaces the row of a session that holds it (a late
// write of a past leader).

import (
	"context"
	"testing"

	"github.com/txlock/txlock/internal/testdb"
)

func TestElectionWriteCondition(t *testing.T) {
	db := testdb.Open(t)
	table := testdb.Table(t, db)
	testdb.NoLeaks(t, db)
	l, err := New(db, Table(table))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	e := l.Election(Resource("election:write"))
	hash := e.key.hash()
	write := func(value string, token, connID int64) int64 {
		t.Helper()
		res, err := l.side.ExecContext(ctx, e.q.write, hash[:], value, token, connID, connID)
		if err != nil {
			t.Fatal(err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	read := func() leaderRow {
		t.Helper()
		r, err := e.readLeader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	holder, err := l.sqlDB.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer discard(holder)
	var got, id int64
	if err := holder.QueryRowContext(ctx, "SELECT GET_LOCK(?, 0), CONNECTION_ID()", e.name).Scan(&got, &id); err != nil || got != 1 {
		t.Fatalf("GET_LOCK: %d, %v", got, err)
	}

	// A session that does not hold the lock writes nothing.
	if n := write("paused", 100, id+1000000); n != 0 {
		t.Fatalf("a write for a session without the lock affected %d rows, want 0", n)
	}
	if r := read(); r.ok {
		t.Fatalf("Leader found %+v, want none", r)
	}
	// The holder writes; a second write naming the holder (a late write
	// of a past leader cannot name it: conn ids are unique) is its own.
	if n := write("live", 5, id); n != 1 {
		t.Fatalf("the holder's write affected %d rows, want 1", n)
	}
	if r := read(); !r.ok || r.value != "live" || r.token != 5 {
		t.Fatalf("Leader = %+v, want live/5", r)
	}
	// A past leader's late write (its session no longer holds the lock)
	// never hides the live row, whatever its token.
	if n := write("late", 99, id+1000000); n != 0 {
		t.Fatalf("a late write affected %d rows, want 0", n)
	}
	if r := read(); !r.ok || r.value != "live" {
		t.Fatalf("Leader = %+v after a late write, want live", r)
	}
	// Once the holder is gone, its row is replaced by the next holder's,
	// even with a smaller token (a fencing counter reset).
	if _, err := holder.ExecContext(ctx, "DO RELEASE_LOCK(?)", e.name); err != nil {
		t.Fatal(err)
	}
	next, err := l.sqlDB.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer discard(next)
	var id2 int64
	if err := next.QueryRowContext(ctx, "SELECT GET_LOCK(?, 0), CONNECTION_ID()", e.name).Scan(&got, &id2); err != nil || got != 1 {
		t.Fatalf("GET_LOCK: %d, %v", got, err)
	}
	if n := write("next", 1, id2); n != 2 {
		t.Fatalf("the next holder's write affected %d rows, want 2 (the row replaced)", n)
	}
	if r := read(); !r.ok || r.value != "next" || r.token != 1 {
		t.Fatalf("Leader = %+v, want next/1", r)
	}
}
