// Package history records the critical sections of a lock and checks that
// they never overlapped, or only as their modes allow (shared sections
// with each other, up to n sections of an n-permit semaphore).
//
// The record that counts is the one the database keeps: each critical
// section writes its interval, in server time, into a history table inside
// the lock's own transaction ([Begin] at the start, [Section.Commit] just
// before the commit). Only sections whose transaction committed survive,
// which are exactly those whose effects the lock had to protect; a holder
// that crashed or lost its lock leaves nothing. [Load] reads them back and
// [Check] proves that, per key, no two intervals overlap unless their
// modes allow it ([Mode]) and that fencing tokens increase strictly in
// interval order.
//
// Times are server times (NOW(6)) as microseconds since the Unix epoch,
// independent of the session's time zone. The request time of an
// acquisition is the client's wall clock: on one host it is the same clock
// as the server's, which is enough for the fairness measure ([Overtakes]).
package history

import (
	"context"
	"database/sql"
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
	Mode      Mode // how the section held its key: Exclusive (the zero value), Shared, Semaphore
	Permits   int  // Semaphore: how many sections of the key may be in progress at once; 0 otherwise
}

func (e Event) String() string {
	mode := ""
	switch e.Mode {
	case Exclusive:
	case Semaphore:
		mode = fmt.Sprintf(" %s of %d", e.Mode, e.Permits)
	default:
		mode = " " + e.Mode.String()
	}
	return fmt.Sprintf("{key %q%s proc %d g %d token %d [%s, %s] %s}", e.Key, mode, e.Process, e.Goroutine,
		e.Token, e.Start.UTC().Format("15:04:05.000000"), e.End.UTC().Format("15:04:05.000000"), e.Outcome)
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
		"mode TINYINT UNSIGNED NOT NULL DEFAULT 0, "+
		"permits INT NOT NULL DEFAULT 0, "+
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

// Begin starts recording an exclusive critical section: call it first
// thing once the lock is held, with q the lock's transaction. It reads the
// server's clock. request is when the acquisition was asked for (zero if
// unknown).
func Begin(ctx context.Context, q Querier, table string, proc, goroutine int, key string, token int64, request time.Time) (*Section, error) {
	return BeginSection(ctx, q, table, Event{Process: proc, Goroutine: goroutine, Key: key, Token: token, Request: request})
}

// BeginSection is Begin for the section e names: its Process, Goroutine,
// Key, Token, Request, Mode and Permits are recorded; its Start is read
// from the server's clock, its End and Outcome are ignored.
func BeginSection(ctx context.Context, q Querier, table string, e Event) (*Section, error) {
	if err := validTable(table); err != nil {
		return nil, err
	}
	var start int64
	if err := q.QueryRowContext(ctx, "SELECT "+serverMicros).Scan(&start); err != nil {
		return nil, fmt.Errorf("history: reading the server clock: %w", err)
	}
	e.Start, e.End, e.Outcome = time.UnixMicro(start), time.Time{}, ""
	return &Section{table: table, q: q, ev: e}, nil
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
	_, err := s.q.ExecContext(ctx, "INSERT INTO `"+s.table+"` (lock_key, token, proc, goroutine, t_request, t_start, t_end, mode, permits)"+
		" VALUES (?, ?, ?, ?, ?, ?, "+serverMicros+", ?, ?)",
		s.ev.Key, s.ev.Token, s.ev.Process, s.ev.Goroutine, req, s.ev.Start.UnixMicro(), s.ev.Mode, s.ev.Permits)
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
	rows, err := db.QueryContext(ctx, "SELECT lock_key, token, proc, goroutine, t_request, t_start, t_end, mode, permits FROM `"+table+"` ORDER BY seq")
	if err != nil {
		return nil, fmt.Errorf("history: reading %s: %w", table, err)
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		var e Event
		var req, start, end int64
		if err := rows.Scan(&e.Key, &e.Token, &e.Process, &e.Goroutine, &req, &start, &end, &e.Mode, &e.Permits); err != nil {
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
	if r.Modes[Exclusive] != r.Checked {
		for m := Exclusive; m <= Semaphore; m++ {
			fmt.Fprintf(&b, ", %d %s", r.Modes[m], m)
		}
		peak := 0
		for _, n := range r.Peak {
			peak = max(peak, n)
		}
		fmt.Fprintf(&b, "; %d started while another of their key was in progress, at most %d at once", r.Overlapped, peak)
	}
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
