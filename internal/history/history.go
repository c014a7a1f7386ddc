// Package history records the critical sections of a lock and checks that
// they never overlapped.
//
// The record that counts is the one the database keeps: each critical
// section writes its interval, in server time, into a history table inside
// the lock's own transaction ([Begin] at the start, [Section.Commit] just
// before the commit). Only sections whose transaction committed survive,
// which are exactly those whose effects the lock had to protect; a holder
// that crashed or lost its lock leaves nothing. [Load] reads them back and
// [Check] proves that, per key, no two intervals overlap and that fencing
// tokens increase strictly in interval order.
//
// Times are server times (NOW(6)) as microseconds since the Unix epoch,
// independent of the session's time zone. The request time of an
// acquisition is the client's wall clock: on one host it is the same clock
// as the server's, which is enough for the fairness measure ([Overtakes]).
package history

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Outcome is how an acquisition ended.
type Outcome string

// Outcomes. Only Committed sections are checked: the others' effects were
// rolled back.
const (
	Committed   Outcome = "committed"
	RolledBack  Outcome = "rolled_back"
	NotAcquired Outcome = "not_acquired"
	Lost        Outcome = "lost"
	Failed      Outcome = "failed"
)

// An Event is one acquisition and, when it was granted, its critical
// section.
type Event struct {
	Process   int    // OS process (or any id of the holder's process)
	Goroutine int    // worker within the process
	Key       string // the lock's key
	Token     int64  // fencing token, 0 when fencing was not used
	Request   time.Time
	Start     time.Time // first instant inside the critical section
	End       time.Time // last instant inside it
	Outcome   Outcome
}

func (e Event) String() string {
	return fmt.Sprintf("{key %q proc %d g %d token %d [%s, %s] %s}", e.Key, e.Process, e.Goroutine,
		e.Token, e.Start.UTC().Format("15:04:05.000000"), e.End.UTC().Format("15:04:05.000000"), e.Outcome)
}

// A Violation is a pair of critical sections of one key that break mutual
// exclusion (Kind "overlap"), or a token that did not increase
// ("token"), or a malformed interval ("interval", B is zero).
type Violation struct {
	Kind string
	A, B Event
}

func (v Violation) Error() string {
	switch v.Kind {
	case "interval":
		return fmt.Sprintf("history: interval ends before it starts: %s", v.A)
	case "token":
		return fmt.Sprintf("history: token did not increase: %s then %s", v.A, v.B)
	default:
		return fmt.Sprintf("history: critical sections overlap: %s and %s", v.A, v.B)
	}
}

// A Report is the result of Analyze.
type Report struct {
	Checked    int // committed critical sections checked
	Keys       int // distinct keys among them
	Violations []Violation
}

// Err returns nil when there is no violation, else an error listing them
// (the first 10).
func (r Report) Err() error {
	if len(r.Violations) == 0 {
		return nil
	}
	errs := []error{fmt.Errorf("history: %d violation(s) in %d critical sections", len(r.Violations), r.Checked)}
	for i, v := range r.Violations {
		if i == 10 {
			errs = append(errs, fmt.Errorf("... and %d more", len(r.Violations)-10))
			break
		}
		errs = append(errs, v)
	}
	return errors.Join(errs...)
}

// Check returns an error if two committed critical sections of the same key
// overlapped, or if fencing tokens did not increase strictly in interval
// order. Only events with Outcome Committed are considered. Intervals that
// merely touch (one ends the microsecond the next starts) do not overlap.
func Check(events []Event) error { return Analyze(events).Err() }

// Analyze is Check with the details.
func Analyze(events []Event) Report {
	byKey := committedByKey(events)
	var r Report
	r.Keys = len(byKey)
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		evs := byKey[k]
		r.Checked += len(evs)
		// Interval order: by start, then end.
		slices.SortStableFunc(evs, func(a, b Event) int {
			return cmp.Or(a.Start.Compare(b.Start), a.End.Compare(b.End))
		})
		// latest is the section that ends last among those seen so far: a
		// section that starts before it ends overlaps it, even if the
		// section just before in start order ended earlier.
		latest := -1
		for i, e := range evs {
			if e.End.Before(e.Start) {
				r.Violations = append(r.Violations, Violation{Kind: "interval", A: e})
			}
			if latest >= 0 && e.Start.Before(evs[latest].End) {
				r.Violations = append(r.Violations, Violation{Kind: "overlap", A: evs[latest], B: e})
			}
			if i > 0 && (e.Token != 0 || evs[i-1].Token != 0) && e.Token <= evs[i-1].Token {
				r.Violations = append(r.Violations, Violation{Kind: "token", A: evs[i-1], B: e})
			}
			if latest < 0 || e.End.After(evs[latest].End) {
				latest = i
			}
		}
	}
	return r
}

func committedByKey(events []Event) map[string][]Event {
	byKey := make(map[string][]Event)
	for _, e := range events {
		if e.Outcome == Committed {
			byKey[e.Key] = append(byKey[e.Key], e)
		}
	}
	return byKey
}

// Fairness is the result of Overtakes for one key.
type Fairness struct {
	Key      string
	Grants   int   // committed sections with a request time
	Max      int   // most grants to others while one acquisition waited
	MaxEvent Event // the acquisition that waited through Max grants
	Mean     float64
}

// Overtakes measures, per key, how many grants others got while an
// acquisition waited: for each committed section with a request time, the
// number of other committed sections of its key that started after its
// request and before its own start. Keys are in sorted order.
func Overtakes(events []Event) []Fairness {
	byKey := committedByKey(events)
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]Fairness, 0, len(keys))
	for _, k := range keys {
		evs := byKey[k]
		starts := make([]time.Time, len(evs))
		for i, e := range evs {
			starts[i] = e.Start
		}
		slices.SortFunc(starts, time.Time.Compare)
		f := Fairness{Key: k}
		total := 0
		for _, e := range evs {
			if e.Request.IsZero() {
				continue
			}
			// Starts strictly inside (Request, Start): the section itself
			// starts at Start, so it is not counted.
			lo := sort.Search(len(starts), func(i int) bool { return starts[i].After(e.Request) })
			hi := sort.Search(len(starts), func(i int) bool { return !starts[i].Before(e.Start) })
			n := max(hi-lo, 0)
			f.Grants++
			total += n
			if n > f.Max || f.Grants == 1 {
				f.Max, f.MaxEvent = n, e
			}
		}
		if f.Grants > 0 {
			f.Mean = float64(total) / float64(f.Grants)
		}
		out = append(out, f)
	}
	return out
}

// Querier is what a transaction offers: *sql.Tx, *sql.Conn, *sql.DB, and
// gorm's ConnPool (tx.Statement.ConnPool of a gorm transaction) all do.
type Querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// serverMicros is the server's time in microseconds since the Unix epoch.
const serverMicros = "CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)"

// validTable accepts names that cannot inject SQL.
func validTable(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("history: bad table name %q", name)
	}
	for i, r := range name {
		if r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && r >= '0' && r <= '9' {
			continue
		}
		return fmt.Errorf("history: bad table name %q", name)
	}
	return nil
}

// CreateTable creates the history table name (if missing).
func CreateTable(ctx context.Context, db Querier, name string) error {
	if err := validTable(name); err != nil {
		return err
	}
	_, err := db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS `"+name+"` ("+
		"seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, "+
		"lock_key VARCHAR(255) NOT NULL, "+
		"token BIGINT NOT NULL, "+
		"proc INT NOT NULL, "+
		"goroutine INT NOT NULL, "+
		"t_request BIGINT NOT NULL, "+
		"t_start BIGINT NOT NULL, "+
		"t_end BIGINT NOT NULL, "+
		"KEY (lock_key, t_start)) ENGINE=InnoDB")
	if err != nil {
		return fmt.Errorf("history: creating %s: %w", name, err)
	}
	return nil
}

// DropTable drops the history table name.
func DropTable(ctx context.Context, db Querier, name string) error {
	if err := validTable(name); err != nil {
		return err
	}
	_, err := db.ExecContext(ctx, "DROP TABLE IF EXISTS `"+name+"`")
	return err
}

// A Section is a critical section in progress, begun by Begin.
type Section struct {
	table string
	q     Querier
	ev    Event
}

// Begin starts recording a critical section: call it first thing once the
// lock is held, with q the lock's transaction. It reads the server's clock.
// request is when the acquisition was asked for (zero if unknown).
func Begin(ctx context.Context, q Querier, table string, proc, goroutine int, key string, token int64, request time.Time) (*Section, error) {
	if err := validTable(table); err != nil {
		return nil, err
	}
	var start int64
	if err := q.QueryRowContext(ctx, "SELECT "+serverMicros).Scan(&start); err != nil {
		return nil, fmt.Errorf("history: reading the server clock: %w", err)
	}
	return &Section{table: table, q: q, ev: Event{
		Process: proc, Goroutine: goroutine, Key: key, Token: token,
		Request: request, Start: time.UnixMicro(start),
	}}, nil
}

// Start returns the section's start, in server time.
func (s *Section) Start() time.Time { return s.ev.Start }

// End writes the section's row, with its end in server time, into the
// lock's transaction: call it last thing before the commit. The row exists
// only if that transaction commits.
func (s *Section) End(ctx context.Context) error {
	var req int64
	if !s.ev.Request.IsZero() {
		req = s.ev.Request.UnixMicro()
	}
	_, err := s.q.ExecContext(ctx, "INSERT INTO `"+s.table+"` (lock_key, token, proc, goroutine, t_request, t_start, t_end)"+
		" VALUES (?, ?, ?, ?, ?, ?, "+serverMicros+")",
		s.ev.Key, s.ev.Token, s.ev.Process, s.ev.Goroutine, req, s.ev.Start.UnixMicro())
	if err != nil {
		return fmt.Errorf("history: recording the section: %w", err)
	}
	return nil
}

// Load reads every committed section of the history table, as events with
// Outcome Committed, in insertion order.
func Load(ctx context.Context, db interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}, table string) ([]Event, error) {
	if err := validTable(table); err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, "SELECT lock_key, token, proc, goroutine, t_request, t_start, t_end FROM `"+table+"` ORDER BY seq")
	if err != nil {
		return nil, fmt.Errorf("history: reading %s: %w", table, err)
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		var e Event
		var req, start, end int64
		if err := rows.Scan(&e.Key, &e.Token, &e.Process, &e.Goroutine, &req, &start, &end); err != nil {
			return nil, fmt.Errorf("history: reading %s: %w", table, err)
		}
		if req != 0 {
			e.Request = time.UnixMicro(req)
		}
		e.Start, e.End, e.Outcome = time.UnixMicro(start), time.UnixMicro(end), Committed
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("history: reading %s: %w", table, err)
	}
	return out, nil
}

// Summary formats a one-line description of r and fs for logs.
func Summary(r Report, fs []Fairness) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d critical sections on %d keys checked, %d violations", r.Checked, r.Keys, len(r.Violations))
	for _, f := range fs {
		fmt.Fprintf(&b, "; %s: %d grants, at most %d overtakes (mean %.2f)", f.Key, f.Grants, f.Max, f.Mean)
	}
	return b.String()
}

// A Recorder collects events in memory, from many goroutines: outcomes
// that leave no row in the history table (not acquired, lost, rolled back)
// can be counted with it.
type Recorder struct {
	mu     sync.Mutex
	events []Event
}

// Add records e.
func (r *Recorder) Add(e Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

// Events returns a copy of the events recorded so far.
func (r *Recorder) Events() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// Count returns how many recorded events have each outcome.
func (r *Recorder) Count() map[Outcome]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[Outcome]int)
	for _, e := range r.events {
		m[e.Outcome]++
	}
	return m
}
