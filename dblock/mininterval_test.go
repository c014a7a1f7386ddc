package dblock_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/lockkey"
	"github.com/txlock/txlock/schema"
)

// errRolledBack is what a job returns to have its run rolled back.
var errRolledBack = errors.New("job failed: roll back")

// countRuns returns a fn that counts its runs in *n.
func countRuns(n *int) func(context.Context, *gorm.DB) error {
	return func(context.Context, *gorm.DB) error { *n++; return nil }
}

// TestMinIntervalOutcomes walks MinInterval through every way a lock's
// transaction ends, with an interval (an hour) that no load can make run
// out: a run that rolled back does not count, a committed one does, and a
// call too soon gets ErrTooSoon without running fn and leaves the key as
// the acquisition found it (free, or held by the caller's transaction).
func TestMinIntervalOutcomes(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	hour := dblock.MinInterval(time.Hour)

	t.Run("Do", func(t *testing.T) {
		key := dblock.Resource("mi-do")
		ran := 0
		err := l.Do(ctx, key, func(context.Context, *gorm.DB) error { ran++; return errRolledBack }, hour)
		if !errors.Is(err, errRolledBack) || ran != 1 {
			t.Fatalf("first Do: ran %d, err %v; want 1 run and the job's error", ran, err)
		}
		// The rolled-back run left no trace: the next one runs at once.
		if err := l.Do(ctx, key, countRuns(&ran), hour); err != nil || ran != 2 {
			t.Fatalf("Do after a rolled-back run: ran %d, err %v; want it to run", ran, err)
		}
		err = l.Do(ctx, key, countRuns(&ran), hour)
		if !errors.Is(err, dblock.ErrTooSoon) || ran != 2 {
			t.Fatalf("Do within the interval: ran %d, err %v; want ErrTooSoon and fn not run", ran, err)
		}
		mustContain(t, err, key.String(), "last ran at", "server time, UTC", "MinInterval(1h0m0s)", "next run is allowed from")
		t.Logf("ErrTooSoon: %v", err)
		assertFree(t, l, key)
		// A short interval has run out by the next call.
		if err := l.Do(ctx, key, countRuns(&ran), dblock.MinInterval(time.Microsecond)); err != nil || ran != 3 {
			t.Fatalf("Do with MinInterval(1µs): ran %d, err %v", ran, err)
		}
	})

	t.Run("Lock", func(t *testing.T) {
		key := dblock.Resource("mi-lock")
		lk, err := l.Lock(ctx, key, hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := lk.Rollback(); err != nil {
			t.Fatal(err)
		}
		lk, err = l.TryLock(ctx, key, hour)
		if err != nil {
			t.Fatalf("TryLock after a rolled-back Lock: %v", err)
		}
		if err := lk.Commit(); err != nil {
			t.Fatal(err)
		}
		for _, try := range []func() (*dblock.Lock, error){
			func() (*dblock.Lock, error) { return l.Lock(ctx, key, hour) },
			func() (*dblock.Lock, error) { return l.TryLock(ctx, key, hour) },
		} {
			lk, err := try()
			if !errors.Is(err, dblock.ErrTooSoon) || lk != nil {
				t.Fatalf("Lock within the interval: %v, %v; want ErrTooSoon and no Lock", lk, err)
			}
		}
		assertFree(t, l, key)
	})

	t.Run("LockTx", func(t *testing.T) {
		key := dblock.Resource("mi-locktx")
		tx := e.db.Begin()
		if err := l.LockTx(ctx, tx, key, hour); err != nil {
			t.Fatal(err)
		}
		if err := tx.Rollback().Error; err != nil {
			t.Fatal(err)
		}
		tx = e.db.Begin()
		if err := l.LockTx(ctx, tx, key, hour); err != nil {
			t.Fatalf("LockTx after a rolled-back one: %v", err)
		}
		if err := tx.Commit().Error; err != nil {
			t.Fatal(err)
		}
		// Too soon in a caller's transaction: the key stays held by it.
		tx = e.db.Begin()
		defer tx.Rollback()
		err := l.LockTx(ctx, tx, key, hour)
		if !errors.Is(err, dblock.ErrTooSoon) {
			t.Fatalf("LockTx within the interval: %v, want ErrTooSoon", err)
		}
		assertHeld(t, l, key)
		// A Do joining it is too soon as well, and fn does not run.
		ran := 0
		if err := l.Do(dblock.WithTx(ctx, tx), dblock.Resource("mi-locktx-2"), countRuns(&ran), hour); err != nil || ran != 1 {
			t.Fatalf("Do of another key under WithTx: ran %d, %v", ran, err)
		}
		if err := tx.Commit().Error; err != nil {
			t.Fatal(err)
		}
		err = l.Do(ctx, dblock.Resource("mi-locktx-2"), fnMustNotRun(t), hour)
		if !errors.Is(err, dblock.ErrTooSoon) {
			t.Fatalf("Do after the caller committed a joined run: %v, want ErrTooSoon", err)
		}
		assertFree(t, l, key)
	})

	t.Run("Nested", func(t *testing.T) {
		// The nested Do of the held key is part of the outer run: it is
		// not judged again. A nested Do of another key is judged.
		key, other := dblock.Resource("mi-nested"), dblock.Resource("mi-nested-other")
		if err := l.Do(ctx, other, func(context.Context, *gorm.DB) error { return nil }, hour); err != nil {
			t.Fatal(err)
		}
		inner := 0
		err := l.Do(ctx, key, func(ctx context.Context, _ *gorm.DB) error {
			if err := l.Do(ctx, key, countRuns(&inner), hour); err != nil {
				return err
			}
			if err := l.Do(ctx, other, countRuns(&inner), hour); !errors.Is(err, dblock.ErrTooSoon) {
				return fmt.Errorf("nested Do of a key run within the hour: %v, want ErrTooSoon", err)
			}
			return nil
		}, hour)
		if err != nil || inner != 1 {
			t.Fatalf("nested: inner ran %d, err %v", inner, err)
		}
	})

	t.Run("BadInput", func(t *testing.T) {
		for _, d := range []time.Duration{0, -time.Second, time.Nanosecond} {
			err := l.Do(ctx, dblock.Resource("mi-bad"), fnMustNotRun(t), dblock.MinInterval(d))
			mustContain(t, err, "MinInterval must be at least 1µs")
		}
		err := l.DoMulti(ctx, []dblock.Key{dblock.Resource("mi-a"), dblock.Resource("mi-b")}, fnMustNotRun(t), hour)
		mustContain(t, err, "MinInterval applies to one key")
		assertFree(t, l, dblock.Resource("mi-a"))
		// One key through DoMulti is one key.
		ran := 0
		if err := l.DoMulti(ctx, []dblock.Key{dblock.Resource("mi-a"), dblock.Resource("mi-a")}, countRuns(&ran), hour); err != nil || ran != 1 {
			t.Fatalf("DoMulti of one key: ran %d, %v", ran, err)
		}
	})
}

// TestMinIntervalDSNSettings runs MinInterval on pools whose DSN changes
// what a statement reports or sees: clientFoundRows (the affected-row
// count of an upsert that changes nothing), READ COMMITTED, autocommit=0,
// and a session time zone far from UTC (the interval is judged in UTC).
func TestMinIntervalDSNSettings(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	for i, edit := range []func(*gomysql.Config){
		func(c *gomysql.Config) { c.ClientFoundRows = true },
		func(c *gomysql.Config) {
			c.Params = map[string]string{"tx_isolation": "'READ-COMMITTED'", "autocommit": "0"}
		},
		func(c *gomysql.Config) { c.Params = map[string]string{"time_zone": "'+13:00'"} },
		func(c *gomysql.Config) { c.Params = map[string]string{"time_zone": "'-11:00'"} },
	} {
		db := faultOpen(t, dsnWith(t, edit))
		l := faultLocker(t, db, e.table)
		key := dblock.Resource("mi-dsn")
		ran := 0
		err := l.Do(ctx, key, countRuns(&ran), dblock.MinInterval(time.Hour))
		if i == 0 {
			if err != nil || ran != 1 {
				t.Fatalf("pool %d: first run: ran %d, %v", i, ran, err)
			}
			continue
		}
		if !errors.Is(err, dblock.ErrTooSoon) || ran != 0 {
			t.Fatalf("pool %d: ran %d, %v; want ErrTooSoon (the first pool ran within the hour)", i, ran, err)
		}
		if err := l.Do(ctx, key, countRuns(&ran), dblock.MinInterval(time.Microsecond)); err != nil || ran != 1 {
			t.Fatalf("pool %d: MinInterval(1µs): ran %d, %v", i, ran, err)
		}
		if err := l.Do(ctx, key, countRuns(&ran), dblock.MinInterval(time.Hour)); !errors.Is(err, dblock.ErrTooSoon) || ran != 1 {
			t.Fatalf("pool %d: ran %d, %v; want ErrTooSoon", i, ran, err)
		}
	}
}

// TestMinIntervalRunTableMissing: a lock table at migration 1 (no run
// table) gives ErrTableMissing naming the fix, and the key is free after.
func TestMinIntervalRunTableMissing(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	if err := e.db.Exec("DROP TABLE `" + schema.RunTable(e.table) + "`").Error; err != nil {
		t.Fatal(err)
	}
	key := dblock.Resource("mi-missing")
	err := l.Do(ctx, key, fnMustNotRun(t), dblock.MinInterval(time.Second))
	if !errors.Is(err, dblock.ErrTableMissing) || mysqlNumber(t, err) != 1146 {
		t.Fatalf("Do with MinInterval and no run table: %v, want ErrTableMissing wrapping 1146", err)
	}
	mustContain(t, err, schema.RunTable(e.table), "txlock migrate up", "migrations.Up")
	assertFree(t, l, key)
	tx := e.db.Begin()
	defer tx.Rollback()
	if err := l.LockTx(ctx, tx, key, dblock.MinInterval(time.Second)); !errors.Is(err, dblock.ErrTableMissing) {
		t.Fatalf("LockTx: %v, want ErrTableMissing", err)
	}
}

// TestMinIntervalNoGapLocks: the run's upsert takes only record locks, so
// a transaction recording one key's run (a first run, a run, a turn too
// soon), kept open, does not hold up the first runs of other keys, whose
// rows land anywhere in the run table's index (keys hash at random). A
// gap lock would make some of them wait for the server's lock-wait
// timeout, beyond opTimeout.
func TestMinIntervalNoGapLocks(t *testing.T) {
	e, l := setupLocker(t)
	key := dblock.Resource("mi-gap")
	n := 0
	for i, opt := range []dblock.LockOption{dblock.MinInterval(time.Hour), dblock.MinInterval(time.Microsecond), dblock.MinInterval(time.Hour)} {
		tx := e.db.Begin()
		err := l.LockTx(ctxT(t), tx, key, opt)
		if (i < 2) != (err == nil) {
			tx.Rollback()
			t.Fatalf("LockTx %d: %v", i, err)
		}
		for range 8 {
			n++
			other := dblock.Resource(fmt.Sprintf("mi-gap-%d", n))
			if err := l.Do(ctxWithin(t, opTimeout), other, func(context.Context, *gorm.DB) error { return nil }, dblock.MinInterval(time.Hour)); err != nil {
				tx.Rollback()
				t.Fatalf("first run of %s beside an open transaction that recorded %s (%d): %v", other, key, i, err)
			}
		}
		if err := tx.Commit().Error; err != nil {
			t.Fatal(err)
		}
	}
}

// scheduleRun is one run of the racing schedule, as its job recorded it
// in its transaction: the grant's server time, read back from the run
// table, which the transaction wrote at the grant.
type scheduleRun struct {
	Worker  string
	Granted time.Time
}

// TestMinIntervalSchedule: several Lockers, each on a pool of its own,
// tick on a schedule much faster than MinInterval and race for one key;
// every third run granted rolls back. The committed runs must be spaced by at
// least the interval in server time (the run table's grant times, which
// each job copies into its own table in its transaction), their count must
// be the run table's, and the losers must see ErrTooSoon. TXLOCK_TORTURE=1
// runs it longer.
func TestMinIntervalSchedule(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	const (
		workers  = 4
		interval = 150 * time.Millisecond
		tick     = 10 * time.Millisecond
	)
	span := 2 * time.Second
	if os.Getenv("TXLOCK_TORTURE") == "1" {
		span = 30 * time.Second
	}
	runs := e.businessTable(t, "runs", "id BIGINT AUTO_INCREMENT PRIMARY KEY, worker VARCHAR(16) NOT NULL, granted DATETIME(6) NOT NULL")
	runTable := schema.RunTable(e.table)
	key := dblock.Resource("nightly-report")

	type tally struct{ ran, tooSoon, rolledBack int }
	tallies := make([]tally, workers)
	var rolledBackAt []time.Time // grants of runs that rolled back
	var grants atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	stop := time.Now().Add(span)
	for w := range workers {
		db := faultOpen(t, dsnWith(t, func(*gomysql.Config) {}))
		l := faultLocker(t, db, e.table)
		name := fmt.Sprintf("w%d", w)
		wg.Go(func() {
			tk := time.NewTicker(tick)
			defer tk.Stop()
			for time.Now().Before(stop) {
				<-tk.C
				var granted time.Time
				err := l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
					if err := tx.Raw("SELECT last_run FROM `" + runTable + "`").Row().Scan(&granted); err != nil {
						return err
					}
					if err := tx.Exec("INSERT INTO `"+runs+"` (worker, granted) VALUES (?, ?)", name, granted).Error; err != nil {
						return err
					}
					if grants.Add(1)%3 == 2 {
						return errRolledBack // every third run granted, whoever runs it
					}
					return nil
				}, dblock.MinInterval(interval))
				mu.Lock()
				switch {
				case err == nil:
					tallies[w].ran++
				case errors.Is(err, dblock.ErrTooSoon):
					tallies[w].tooSoon++
				case errors.Is(err, errRolledBack):
					tallies[w].rolledBack++
					rolledBackAt = append(rolledBackAt, granted)
				default:
					t.Errorf("%s: Do: %v", name, err)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()

	var got []scheduleRun
	if err := e.db.Raw("SELECT worker, granted FROM `" + runs + "` ORDER BY granted").Scan(&got).Error; err != nil {
		t.Fatal(err)
	}
	var recorded int64
	if err := e.db.Raw("SELECT runs FROM `"+runTable+"` WHERE key_hash = ?", keyHash(key)).Row().Scan(&recorded); err != nil {
		t.Fatal(err)
	}
	var ran, tooSoon, rolledBack int
	for w, c := range tallies {
		t.Logf("w%d: ran %d, too soon %d, rolled back %d", w, c.ran, c.tooSoon, c.rolledBack)
		ran, tooSoon, rolledBack = ran+c.ran, tooSoon+c.tooSoon, rolledBack+c.rolledBack
	}
	if len(got) != ran || recorded != int64(ran) {
		t.Fatalf("%d committed runs reported, %d rows in the job's table, the run table counts %d", ran, len(got), recorded)
	}
	if ran < 2 || tooSoon == 0 || rolledBack == 0 {
		t.Fatalf("ran %d, too soon %d, rolled back %d: the schedule did not race", ran, tooSoon, rolledBack)
	}
	minGap := time.Duration(1<<63 - 1)
	for i := 1; i < len(got); i++ {
		gap := got[i].Granted.Sub(got[i-1].Granted)
		minGap = min(minGap, gap)
		if gap < interval {
			t.Errorf("runs %d (%s at %v) and %d (%s at %v) are %v apart in server time, want at least %v",
				i-1, got[i-1].Worker, got[i-1].Granted, i, got[i].Worker, got[i].Granted, gap, interval)
		}
	}
	// A run that rolled back does not count: how often the next committed
	// run came sooner than the interval after it (logged: it depends on
	// the machine's scheduling, not on the library).
	soon := 0
	for _, rb := range rolledBackAt {
		for _, r := range got {
			if r.Granted.After(rb) {
				if r.Granted.Sub(rb) < interval {
					soon++
				}
				break
			}
		}
	}
	t.Logf("%d committed runs in %v, closest two %v apart (MinInterval %v); %d ErrTooSoon; %d rolled back, %d of them followed by a committed run sooner than the interval",
		ran, span, minGap, interval, tooSoon, rolledBack, soon)
}

// keyHash is the run table's key_hash of key.
func keyHash(key dblock.Key) []byte {
	h := lockkey.Fields(key).Hash()
	return h[:]
}

// TestMinIntervalTelemetry: a turn skipped by MinInterval is counted as
// too_soon, not as an error, in the acquisition metric and Do's span.
func TestMinIntervalTelemetry(t *testing.T) {
	e := setup(t)
	rec := newTelRecorder(t)
	l := e.locker(t, rec.options()...)
	defer l.Close()
	ctx := ctxT(t)
	key := dblock.Resource("mi-tel")
	for range 2 {
		_ = l.Do(ctx, key, func(context.Context, *gorm.DB) error { return nil }, dblock.MinInterval(time.Hour))
	}
	ms := rec.collect(t)
	if got := acquisitions(t, ms, "resource"); got["acquired"] != 1 || got["too_soon"] != 1 || len(got) != 2 {
		t.Errorf("acquisitions by outcome %v, want acquired:1 too_soon:1", got)
	}
	var outcomes []string
	for _, s := range rec.spansNamed("txlock.Do") {
		outcomes = append(outcomes, spanAttr(s, "outcome"))
	}
	if fmt.Sprint(outcomes) != "[ok too_soon]" {
		t.Errorf("txlock.Do outcomes %v, want [ok too_soon]", outcomes)
	}
}

// BenchmarkMinInterval is Do with MinInterval beside Do without: a run
// costs one round trip more (the upsert of the run), a turn too soon two
// (the upsert and the read of the last run for the error), against
// rt/op of the plain Do.
func BenchmarkMinInterval(b *testing.B) {
	benchOptions(b, dblock.Resource("bench:mininterval"), []optionCase{
		{"Do", nil, nil},
		{"Do-MinInterval-runs", []dblock.LockOption{dblock.MinInterval(time.Microsecond)}, nil},
		{"Do-MinInterval-too-soon", []dblock.LockOption{dblock.MinInterval(time.Hour)}, dblock.ErrTooSoon},
	})
}

// optionCase is a Do with opts; errors matching expected count as success.
type optionCase struct {
	name     string
	opts     []dblock.LockOption
	expected error
}

// benchOptions benchmarks the uncontended Do of key with an empty fn for
// each case, and reports its round trips.
func benchOptions(b *testing.B, key dblock.Key, cases []optionCase) {
	d := openBench(b)
	ctx := context.Background()
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			op := func(_ *gorm.DB, l *dblock.Locker) error {
				if err := l.Do(ctx, key, noop, c.opts...); c.expected == nil || !errors.Is(err, c.expected) {
					return err
				}
				return nil
			}
			bench(b, d.plain, d.locker(b, d.plain), op)
			d.roundTrips(b, op)
		})
	}
}
