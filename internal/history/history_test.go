package history

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/txlock/txlock/internal/testdb"
)

func TestMain(m *testing.M) { testdb.Main(m) }

var t0 = time.Date(2024, 1, 1, 12, 0, 0, 0, time.UTC)

func us(n int) time.Time { return t0.Add(time.Duration(n) * time.Microsecond) }

// ev is a committed section of key over [start, end] microseconds.
func ev(key string, start, end int, token int64) Event {
	return Event{Key: key, Start: us(start), End: us(end), Token: token, Outcome: Committed, Process: start}
}

func violations(t *testing.T, events []Event) []Violation {
	t.Helper()
	r := Analyze(events)
	if (r.Err() == nil) != (len(r.Violations) == 0) {
		t.Fatalf("Err %v disagrees with %d violations", r.Err(), len(r.Violations))
	}
	if err := Check(events); (err == nil) != (len(r.Violations) == 0) {
		t.Fatalf("Check %v disagrees with Analyze", err)
	}
	return r.Violations
}

func TestCheckClean(t *testing.T) {
	events := []Event{
		ev("a", 0, 10, 1),
		ev("a", 10, 20, 2), // touches the previous: not an overlap
		ev("a", 25, 30, 5), // tokens may skip (rolled-back holders took some)
		ev("b", 5, 15, 1),  // other keys are independent
		ev("b", 16, 40, 2),
		{Key: "a", Start: us(12), End: us(18), Outcome: RolledBack}, // not committed: ignored
		{Key: "a", Outcome: NotAcquired},
	}
	if vs := violations(t, events); len(vs) != 0 {
		t.Fatalf("violations in a clean history: %v", vs)
	}
	r := Analyze(events)
	if r.Checked != 5 || r.Keys != 2 {
		t.Errorf("Checked %d, Keys %d, want 5 and 2", r.Checked, r.Keys)
	}
	// Input order does not matter.
	rev := []Event{events[4], events[2], events[0], events[3], events[1]}
	if err := Check(rev); err != nil {
		t.Errorf("shuffled clean history: %v", err)
	}
	// Without fencing (tokens 0) only intervals are checked.
	if err := Check([]Event{ev("a", 0, 10, 0), ev("a", 10, 20, 0)}); err != nil {
		t.Errorf("history without tokens: %v", err)
	}
}

func TestCheckCatchesPlantedOverlap(t *testing.T) {
	events := []Event{ev("a", 0, 10, 1), ev("a", 9, 20, 2), ev("b", 0, 100, 1)}
	vs := violations(t, events)
	if len(vs) != 1 || vs[0].Kind != "overlap" || vs[0].A.Start != us(0) || vs[0].B.Start != us(9) {
		t.Fatalf("violations %v, want the one overlap of a", vs)
	}
	if !strings.Contains(Check(events).Error(), "overlap") {
		t.Errorf("Check: %v", Check(events))
	}
}

func TestCheckCatchesContainedSection(t *testing.T) {
	// A long section containing two short ones that do not overlap each
	// other: comparing neighbours in start order only would miss the second.
	events := []Event{ev("a", 0, 100, 1), ev("a", 10, 20, 2), ev("a", 30, 40, 3), ev("a", 100, 110, 4)}
	vs := violations(t, events)
	var overlaps int
	for _, v := range vs {
		if v.Kind == "overlap" {
			overlaps++
			if v.A.Start != us(0) {
				t.Errorf("overlap %v not reported against the long section", v)
			}
		}
	}
	if overlaps != 2 {
		t.Fatalf("violations %v, want 2 overlaps", vs)
	}
}

func TestCheckCatchesPlantedTokenRegression(t *testing.T) {
	for name, events := range map[string][]Event{
		"lower": {ev("a", 0, 10, 5), ev("a", 11, 20, 4)},
		"equal": {ev("a", 0, 10, 5), ev("a", 11, 20, 5)},
		"zero":  {ev("a", 0, 10, 5), ev("a", 11, 20, 0)},
	} {
		vs := violations(t, events)
		if len(vs) != 1 || vs[0].Kind != "token" {
			t.Errorf("%s: violations %v, want one token violation", name, vs)
		}
	}
}

func TestCheckCatchesBackwardsInterval(t *testing.T) {
	vs := violations(t, []Event{ev("a", 10, 5, 1)})
	if len(vs) != 1 || vs[0].Kind != "interval" {
		t.Fatalf("violations %v, want one interval violation", vs)
	}
}

func TestReportErrListsAtMostTen(t *testing.T) {
	var events []Event
	for i := range 30 {
		events = append(events, ev("a", i, i+5, int64(i+1)))
	}
	err := Check(events)
	if err == nil || !strings.Contains(err.Error(), "... and") {
		t.Fatalf("Check = %v", err)
	}
}

func TestOvertakes(t *testing.T) {
	req := func(e Event, at int) Event { e.Request = us(at); return e }
	events := []Event{
		req(ev("a", 10, 20, 1), 0),  // waited from 0: nobody else started in (0, 10)
		req(ev("a", 20, 30, 2), 5),  // 10 started in (5, 20): 1
		req(ev("a", 30, 40, 3), 1),  // 10 and 20 started in (1, 30): 2
		req(ev("a", 40, 50, 4), 39), // nobody: 0
		ev("a", 50, 60, 5),          // no request time: not measured
		req(ev("b", 0, 1, 1), 0),
	}
	fs := Overtakes(events)
	if len(fs) != 2 || fs[0].Key != "a" || fs[1].Key != "b" {
		t.Fatalf("Overtakes = %+v", fs)
	}
	a := fs[0]
	if a.Grants != 4 || a.Max != 2 || a.MaxEvent.Token != 3 || a.Mean != 0.75 {
		t.Errorf("a: %+v, want 4 grants, max 2 (token 3), mean 0.75", a)
	}
	if fs[1].Max != 0 {
		t.Errorf("b: %+v", fs[1])
	}
	if s := Summary(Analyze(events), fs); !strings.Contains(s, "6 critical sections on 2 keys checked, 0 violations") {
		t.Errorf("Summary = %q", s)
	}
}

func TestRecorder(t *testing.T) {
	var r Recorder
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			r.Add(Event{Goroutine: i, Outcome: Committed})
			r.Add(Event{Goroutine: i, Outcome: NotAcquired})
		})
	}
	wg.Wait()
	if n := len(r.Events()); n != 16 {
		t.Errorf("%d events", n)
	}
	if c := r.Count(); c[Committed] != 8 || c[NotAcquired] != 8 {
		t.Errorf("Count = %v", c)
	}
}

// TestSectionsInTheDatabase: a section recorded in a transaction that
// commits is loaded back with server times; one whose transaction rolls
// back leaves nothing.
func TestSectionsInTheDatabase(t *testing.T) {
	ctx := context.Background()
	db, table := historyTable(t)
	if err := CreateTable(ctx, db, "bad`name"); err == nil {
		t.Error("CreateTable accepted a bad name")
	}

	record := func(token int64, commit bool, hold time.Duration) {
		t.Helper()
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		request := time.Now()
		s, err := Begin(ctx, tx, table, 7, 3, "k", token, request)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(hold)
		if err := s.End(ctx); err != nil {
			t.Fatal(err)
		}
		if commit {
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		}
	}
	before := time.Now()
	record(1, true, 5*time.Millisecond)
	after := time.Now()
	record(2, false, 0)
	record(3, true, 0)
	events, err := Load(ctx, db, table)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 2 || events[0].Token != 1 || events[1].Token != 3 {
		t.Fatalf("loaded %v, want the two committed sections", events)
	}
	e := events[0]
	if e.Process != 7 || e.Goroutine != 3 || e.Key != "k" || e.Outcome != Committed {
		t.Errorf("loaded %+v", e)
	}
	// The server stamped the start before the client slept 5 ms, and the
	// end after: 5 ms apart at least (4 ms: leeway for the two clocks'
	// rounding), however busy the machine.
	if d := e.End.Sub(e.Start); d < 4*time.Millisecond {
		t.Errorf("section of 5ms recorded as %v", d)
	} else {
		t.Logf("section of 5ms recorded as %v", d)
	}
	// Server time and the local clock agree: the server's stamps fall
	// between the local times around the section (give or take 2 s, for a
	// server on another host).
	const skew = 2 * time.Second
	if e.Start.Before(before.Add(-skew)) || e.End.After(after.Add(skew)) {
		t.Errorf("server stamps %v..%v outside the local %v..%v (± %v)", e.Start, e.End, before, after, skew)
	}
	if err := Check(events); err != nil {
		t.Error(err)
	}
	// A planted overlap in the table is caught.
	if _, err := db.ExecContext(ctx, "INSERT INTO `"+table+"` (lock_key, token, proc, goroutine, t_request, t_start, t_end) VALUES ('k', 4, 1, 1, 0, ?, ?)",
		e.Start.UnixMicro()+1, e.End.UnixMicro()+1000000); err != nil {
		t.Fatal(err)
	}
	events, err = Load(ctx, db, table)
	if err != nil {
		t.Fatal(err)
	}
	var v Violation
	if err := Check(events); !errors.As(err, &v) || v.Kind != "overlap" {
		t.Errorf("Check with a planted overlap: %v", err)
	}
}

// TestSectionModesInTheDatabase: sections begun with BeginSection keep
// their mode and permits through the table; shared sections recorded in
// overlapping transactions pass, and a planted exclusive section inside
// them, or a semaphore section over its key's permits, is caught.
func TestSectionModesInTheDatabase(t *testing.T) {
	ctx := context.Background()
	db, table := historyTable(t)

	// Two shared sections and two of a 2-permit semaphore, each pair
	// recorded in two transactions open at the same time: they overlap.
	for _, e := range []Event{{Key: "r", Mode: Shared}, {Key: "s", Mode: Semaphore, Permits: 2}} {
		var secs []*Section
		var txs []*sql.Tx
		for g := range 2 {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			e.Goroutine = g
			s, err := BeginSection(ctx, tx, table, e)
			if err != nil {
				t.Fatal(err)
			}
			secs, txs = append(secs, s), append(txs, tx)
		}
		// The first section ends after the second started (server time).
		waitServerTick(t, db, secs[1].Start())
		for i, s := range secs {
			if err := s.End(ctx); err != nil {
				t.Fatal(err)
			}
			if err := txs[i].Commit(); err != nil {
				t.Fatal(err)
			}
		}
	}
	events, err := Load(ctx, db, table)
	if err != nil {
		t.Fatal(err)
	}
	r := Analyze(events)
	if err := r.Err(); err != nil {
		t.Fatalf("overlapping shared and semaphore sections: %v", err)
	}
	if len(events) != 4 || events[0].Mode != Shared || events[2].Mode != Semaphore || events[2].Permits != 2 || events[3].Goroutine != 1 {
		t.Fatalf("loaded %v", events)
	}
	if r.Peak["r"] != 2 || r.Peak["s"] != 2 {
		t.Fatalf("Peak %v: the recorded sections did not overlap", r.Peak)
	}
	t.Logf("%s", Summary(r, nil))

	plant := func(key string, m Mode, permits int, in Event) {
		t.Helper()
		if _, err := db.ExecContext(ctx, "INSERT INTO `"+table+"` (lock_key, token, proc, goroutine, t_request, t_start, t_end, mode, permits) VALUES (?, 0, 9, 9, 0, ?, ?, ?, ?)",
			key, in.Start.UnixMicro(), in.End.UnixMicro(), m, permits); err != nil {
			t.Fatal(err)
		}
	}
	plant("r", Exclusive, 0, events[1])
	plant("s", Semaphore, 2, events[3])
	events, err = Load(ctx, db, table)
	if err != nil {
		t.Fatal(err)
	}
	vs := Analyze(events).Violations
	if got := strings.Join(kinds(vs), ","); got != KindOverlap+","+KindPermits {
		t.Fatalf("violations %v, want an overlap on r and 3 of 2 permits on s", vs)
	}
}

// waitServerTick waits until the server's clock is past after.
func waitServerTick(t *testing.T, db *sql.DB, after time.Time) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var now int64
		if err := db.QueryRow("SELECT " + serverMicros).Scan(&now); err != nil {
			t.Fatal(err)
		}
		if time.UnixMicro(now).After(after) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server's clock did not pass %v", after)
		}
		time.Sleep(time.Millisecond)
	}
}

// historyTable creates a history table with a random name on the test
// server, dropped when the test ends, and returns a pool and its name.
func historyTable(t *testing.T) (*sql.DB, string) {
	t.Helper()
	db, err := testdb.Open(t).DB()
	if err != nil {
		t.Fatal(err)
	}
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	table := "history_" + hex.EncodeToString(suffix[:])
	if err := CreateTable(context.Background(), db, table); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = DropTable(context.Background(), db, table) })
	return db, table
}
