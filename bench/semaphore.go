package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/schema"
)

// The semaphore workload: -permit-workers goroutines on the hot key, each
// cycle acquire, hold -permit-hold (work done outside the database while
// holding), release. The key is taken as one of its semaphore's -permits
// permits, or exclusively, by the raw floor and by txlock, all in the
// same repetitions; besides throughput, the hand-off: from a holder's
// release to the next grant.

// cycleTrace is what a cycle that traces its hand-offs tells runOne: when
// its lock was granted (the first instant of its critical section) and
// when it asked for the release (the last, just before its COMMIT).
type cycleTrace struct{ granted, released time.Time }

type traceKey struct{}

// withTrace returns ctx carrying tr, which the cycles run in it fill.
func withTrace(ctx context.Context, tr *cycleTrace) context.Context {
	return context.WithValue(ctx, traceKey{}, tr)
}

// traced returns the trace of the cycle running in ctx, or nil.
func traced(ctx context.Context) *cycleTrace {
	tr, _ := ctx.Value(traceKey{}).(*cycleTrace)
	return tr
}

// keep appends the instants the cycle traced.
func (tr *cycleTrace) keep(grants, releases *[]time.Time) {
	if !tr.granted.IsZero() {
		*grants = append(*grants, tr.granted)
	}
	if !tr.released.IsZero() {
		*releases = append(*releases, tr.released)
	}
}

// holdPermit is the critical section of the semaphore workload: it marks
// the grant, holds for d and marks the release.
func holdPermit(ctx context.Context, d time.Duration) error {
	tr := traced(ctx)
	if tr != nil {
		tr.granted = time.Now()
	}
	if err := sleep(ctx, d); err != nil {
		return err
	}
	if tr != nil {
		tr.released = time.Now()
	}
	return nil
}

// handoffs pairs grants with releases in time order: each grant takes the
// oldest release before it that no grant has taken (none: the lock or a
// permit was free, no hand-off), and the hand-off is the time between
// them. On a full semaphore every release is taken by a waiter.
func handoffs(grants, releases []time.Time) []time.Duration {
	slices.SortFunc(grants, time.Time.Compare)
	slices.SortFunc(releases, time.Time.Compare)
	var out []time.Duration
	next, taken := 0, 0 // releases[taken:next] are before the grant and not taken
	for _, g := range grants {
		for next < len(releases) && releases[next].Before(g) {
			next++
		}
		if taken < next {
			out = append(out, g.Sub(releases[taken]))
			taken++
		}
	}
	return out
}

// createSemaphore gives the hot key its semaphore of e.permits permits
// (txlock creates the permit rows) and reads their ids for the raw
// semaphore.
func (e *env) createSemaphore(ctx context.Context, l *dblock.Locker) error {
	if err := l.Do(ctx, e.hot.key, func(context.Context, *gorm.DB) error { return nil }, dblock.Permits(e.permits)); err != nil {
		return fmt.Errorf("creating the permits: %w", err)
	}
	rows, err := e.admin.QueryContext(ctx, "SELECT id FROM `"+schema.PermitTable(e.lockTable)+"` ORDER BY slot")
	if err != nil {
		return fmt.Errorf("reading the permits: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return err
		}
		e.permitIDs = append(e.permitIDs, id)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if len(e.permitIDs) != e.permits {
		return fmt.Errorf("the hot key has %d permit rows, want %d", len(e.permitIDs), e.permits)
	}
	return nil
}

// startRawPermits is the raw semaphore, what Permits does without its
// queue: BEGIN; a free permit row with SELECT ... FOR UPDATE SKIP LOCKED
// over all of them, else SELECT ... FOR UPDATE of one in turn (an
// in-process counter: its best case); the hold; COMMIT.
func startRawPermits(ctx context.Context, e *env, c cell) ([]cycleFunc, func(), error) {
	_, conns, release, err := pinned(ctx, e.ip, c.g)
	if err != nil {
		return nil, nil, err
	}
	ids := make([]string, len(e.permitIDs))
	for i, id := range e.permitIDs {
		ids[i] = strconv.FormatInt(id, 10)
	}
	table := "`" + schema.PermitTable(e.lockTable) + "`"
	anySQL := "SELECT id FROM " + table + " WHERE id IN (" + strings.Join(ids, ", ") + ") LIMIT 1 FOR UPDATE SKIP LOCKED"
	oneSQL := "SELECT id FROM " + table + " WHERE id = ? FOR UPDATE"
	var turn atomic.Int64
	fns := make([]cycleFunc, c.g)
	lock := func(ctx context.Context, tx *sql.Tx) error {
		var id int64
		err := tx.QueryRowContext(ctx, anySQL).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			slot := e.permitIDs[turn.Add(1)%int64(len(e.permitIDs))]
			err = tx.QueryRowContext(ctx, oneSQL, slot).Scan(&id)
		}
		return err
	}
	hold := func(ctx context.Context, _ *sql.Tx) error { return holdPermit(ctx, e.permitHold) }
	for i := range fns {
		conn := conns[i]
		fns[i] = func(ctx, _ context.Context) (time.Duration, error) { return rawCycle(ctx, conn, lock, hold) }
	}
	return fns, release, nil
}

// rawCycle is one cycle of a raw contender on conn: BEGIN, lock (its
// locking reads), work (if any), COMMIT. It returns how long BEGIN and
// lock took.
func rawCycle(ctx context.Context, conn *sql.Conn, lock, work func(context.Context, *sql.Tx) error) (time.Duration, error) {
	t0 := time.Now()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	if err := lock(ctx, tx); err != nil {
		tx.Rollback()
		return 0, err
	}
	acq := time.Since(t0)
	if work != nil {
		if err := work(ctx, tx); err != nil {
			tx.Rollback()
			return 0, err
		}
	}
	return acq, tx.Commit()
}

// startDoPermits is Do with Permits(e.permits).
func startDoPermits(ctx context.Context, e *env, c cell) ([]cycleFunc, func(), error) {
	return startTxlockWith(modeDo, false, false, dblock.Permits(e.permits))(ctx, e, c)
}

// semPairs are the contenders of the semaphore workload, by
// implementation: the one that takes a permit and the one that takes the
// key exclusively. The first is the raw floor.
var semPairs = []modePair{
	{"raw-permits", "raw", "raw row lock"},
	{"do-permits", "do", "txlock Do"},
}

// semCell is the cell of the semaphore workload with g workers.
func semCell(g int) cell { return cell{work: permitHold, hot: true, g: g} }

// semaphoreTables prints the semaphore workload: throughput against the
// raw floor (FOR UPDATE), permits over exclusive in the same repetition,
// the hand-off and acquisition latencies, and the spread of grants.
func (rec *recorder) semaphoreTables(b *strings.Builder, cs []*contender) {
	o := rec.o
	fmt.Fprintf(b, "### %s\n\n", permitHold.title())
	fmt.Fprintf(b, "Each worker: acquire, hold %v (in the client), release; %d permits. x raw floor: over the raw FOR UPDATE of the key's row in the same repetition; "+
		"permits / exclusive: over the same implementation taking the key exclusively. Hand-off: from a holder's release (just before its COMMIT) to the next grant (the oldest release not yet taken; a grant with none before it took a free permit and is not counted).\n\n",
		o.permitHold, o.permits)
	b.WriteString("| contender | mode | workers | cycles/s | x raw floor | permits / exclusive | hand-off p50 | hand-off p99 | acquire p50 | acquire p99 | grants min/max |\n" +
		"|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, p := range semPairs {
		for _, m := range []struct{ id, mode string }{{p.exclusive, "exclusive"}, {p.shared, fmt.Sprintf("%d permits", o.permits)}} {
			if !rec.ran(cs, m.id) {
				continue
			}
			for _, g := range o.permitWorkers {
				s, ok := rec.summary(semCell(g), m.id)
				if !ok {
					continue
				}
				ratio := "–"
				if r, ok := rec.ratio(semCell(g), p.shared, p.exclusive); ok && m.id == p.shared {
					ratio = fmt.Sprintf("%.2fx", r)
				}
				fmt.Fprintf(b, "| %s | %s | %d | %s%s | %.2fx | %s | %s | %s | %s | %s | %.2f |\n", p.label, m.mode, g, thousands(s.thr), errMark(s.errors),
					s.ratio, ratio, ms(s.h50), ms(s.h99), ms(s.p50), ms(s.p99), s.minMax)
			}
		}
	}
	b.WriteString("\n")
}

// semaphoreTargets are the semaphore workload's figures for the targets
// table (reported, no goal).
func (rec *recorder) semaphoreTargets(add func(name string, c cell, a, b string)) {
	for _, g := range rec.o.permitWorkers {
		c := semCell(g)
		n := rec.o.permits
		add(fmt.Sprintf("semaphore, Do Permits(%d) / Do exclusive, %d workers", n, g), c, "do-permits", "do")
		add(fmt.Sprintf("semaphore, raw %d permits / raw FOR UPDATE, %d workers", n, g), c, "raw-permits", "raw")
		add(fmt.Sprintf("semaphore, Do Permits(%d) / raw %d permits, %d workers", n, n, g), c, "do-permits", "raw-permits")
	}
}
