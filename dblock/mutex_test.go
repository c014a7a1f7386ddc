package dblock_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/testdb"
)

// counter is a business counter row, and optionally a table of the
// intervals during which each holder was inside its critical section.
type counter struct {
	ctr string // (id, v): the counter is row 1
	iv  string // (v, proc, t_start, t_end) in server microseconds; "" for none
}

// serverMicros is the server's current time in microseconds, as an integer
// that does not depend on the session's time zone.
const serverMicros = "TIMESTAMPDIFF(MICROSECOND, '2000-01-01 00:00:00', NOW(6))"

// createCounter creates the counter tables next to e's lock table.
func (e env) createCounter(t *testing.T, intervals bool) counter {
	t.Helper()
	c := counter{ctr: e.businessTable(t, "ctr", "id INT NOT NULL PRIMARY KEY, v BIGINT NOT NULL")}
	if err := e.db.Exec("INSERT INTO `" + c.ctr + "` (id, v) VALUES (1, 0)").Error; err != nil {
		t.Fatal(err)
	}
	if intervals {
		c.iv = e.businessTable(t, "iv", "seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, v BIGINT NOT NULL, proc INT NOT NULL, t_start BIGINT NOT NULL, t_end BIGINT NOT NULL")
	}
	return c
}

// errOverlap reports that the in-memory detector saw two holders at once.
var errOverlap = errors.New("two holders inside the critical section at once")

// increment runs one critical section under key: it reads the counter into
// Go and writes back value+1 through the lock's transaction (a
// read-modify-write that loses updates without mutual exclusion), and
// records the interval it held the lock in, in server time. holders, when
// not nil, is the in-process overlap detector.
func (c counter) increment(ctx context.Context, l *dblock.Locker, key dblock.Key, proc int, holders *atomic.Int32) error {
	return l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
		if holders != nil {
			n := holders.Add(1)
			defer holders.Add(-1)
			if n != 1 {
				return fmt.Errorf("%w: %d holders", errOverlap, n)
			}
		}
		var v, start int64
		if err := tx.Raw("SELECT v, "+serverMicros+" FROM `"+c.ctr+"` WHERE id = 1").Row().Scan(&v, &start); err != nil {
			return err
		}
		if err := tx.Exec("UPDATE `"+c.ctr+"` SET v = ? WHERE id = 1", v+1).Error; err != nil {
			return err
		}
		if c.iv == "" {
			return nil
		}
		return tx.Exec("INSERT INTO `"+c.iv+"` (v, proc, t_start, t_end) VALUES (?, ?, ?, "+serverMicros+")", v, proc, start).Error
	})
}

// value reads the counter.
func (c counter) value(t *testing.T, db *gorm.DB) int64 {
	t.Helper()
	var v int64
	if err := db.Raw("SELECT v FROM `" + c.ctr + "` WHERE id = 1").Row().Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// interval is a holder's critical section, in server microseconds.
type interval struct {
	v, proc, start, end int64
}

// checkIntervals verifies that the holders read the values 0..total-1 once
// each (no lost update), and that no two critical sections overlapped in
// server time. It returns how many times the holder's process changed from
// one critical section to the next, as evidence of interleaving.
func (c counter) checkIntervals(t *testing.T, db *gorm.DB, total int) (switches int) {
	t.Helper()
	rows, err := db.Raw("SELECT v, proc, t_start, t_end FROM `" + c.iv + "`").Rows()
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ivs []interval
	for rows.Next() {
		var iv interval
		if err := rows.Scan(&iv.v, &iv.proc, &iv.start, &iv.end); err != nil {
			t.Fatal(err)
		}
		ivs = append(ivs, iv)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(ivs) != total {
		t.Fatalf("%d intervals recorded, want %d", len(ivs), total)
	}
	// Each value read exactly once: a sequence 0..total-1.
	slices.SortFunc(ivs, func(a, b interval) int { return cmp.Compare(a.v, b.v) })
	for i, iv := range ivs {
		if iv.v != int64(i) {
			t.Fatalf("holder #%d read counter %d, want %d: a lost update or a duplicate read", i, iv.v, i)
		}
	}
	// No overlap in server time, whichever order is used: by value read
	// (the order in which holders got the lock) and by start time.
	for _, order := range []struct {
		name string
		cmp  func(a, b interval) int
	}{
		{"value", func(a, b interval) int { return cmp.Compare(a.v, b.v) }},
		{"start", func(a, b interval) int {
			return cmp.Or(cmp.Compare(a.start, b.start), cmp.Compare(a.end, b.end))
		}},
	} {
		slices.SortFunc(ivs, order.cmp)
		for i := range ivs {
			if ivs[i].end < ivs[i].start {
				t.Fatalf("interval %+v ends before it starts", ivs[i])
			}
			if i > 0 && ivs[i].start < ivs[i-1].end {
				t.Fatalf("critical sections overlap (ordered by %s): %+v and %+v", order.name, ivs[i-1], ivs[i])
			}
		}
	}
	for i := 1; i < len(ivs); i++ {
		if ivs[i].proc != ivs[i-1].proc {
			switches++
		}
	}
	return switches
}

// TestMutualExclusion: 16 goroutines x 50 read-modify-write increments of
// one counter row, each under the same key. The counter is exact, and the
// in-memory detector never sees two holders at once.
func TestMutualExclusion(t *testing.T) {
	e, l := setupLocker(t)
	c := e.createCounter(t, true)
	ctx := ctxT(t)
	key := dblock.Resource("counter:1")

	const goroutines, perG = 16, 50
	var holders atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			for range perG {
				if err := c.increment(ctx, l, key, g, &holders); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got, want := c.value(t, e.db), int64(goroutines*perG); got != want {
		t.Fatalf("counter = %d, want %d: updates were lost", got, want)
	}
	switches := c.checkIntervals(t, e.db, goroutines*perG)
	t.Logf("%d hand-offs between goroutines in %d critical sections", switches, goroutines*perG)
}

// Environment of the child processes of TestMutualExclusionProcesses.
const (
	envHelper      = "TXLOCK_TEST_HELPER" // "1" in a child
	envHelperTable = "TXLOCK_TEST_HELPER_TABLE"
	envHelperProc  = "TXLOCK_TEST_HELPER_PROC"
	envHelperProcs = "TXLOCK_TEST_HELPER_PROCS" // processes that wait at the barrier
)

// Shape of TestMutualExclusionProcesses: children plus the parent, each
// with workers goroutines doing perProcess increments in all.
const (
	childProcs = 3
	perProcess = 100
	workers    = 4
)

// The key and the tables of TestMutualExclusionProcesses, derived from the
// lock table's name so that the children find them.
var processKey = dblock.Resource("counter:processes")

func processCounter(table string) (c counter, ready string) {
	return counter{ctr: table + "_ctr", iv: table + "_iv"}, table + "_ready"
}

// runProcess is the work of one process of TestMutualExclusionProcesses:
// check in at the barrier, wait until all processes have, then do
// perProcess increments with a few goroutines, under one in-process
// overlap detector.
func runProcess(t *testing.T, db *gorm.DB, table string, proc, procs int) {
	t.Helper()
	l, err := dblock.New(db, dblock.Table(table))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, ready := processCounter(table)
	ctx := ctxT(t)
	if err := db.Exec("INSERT INTO `"+ready+"` (proc) VALUES (?)", proc).Error; err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(opTimeout)
	for {
		var n int
		if err := db.Raw("SELECT COUNT(*) FROM `" + ready + "`").Row().Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == procs {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d: only %d of %d processes ready after %v", proc, n, procs, opTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	var holders atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for range perProcess / workers {
				if err := c.increment(ctx, l, processKey, proc, &holders); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("process %d: %v", proc, err)
	}
}

// TestHelperProcess is not a test: it is the body of a child process of
// TestMutualExclusionProcesses, which re-executes the test binary with
// -test.run=^TestHelperProcess$ and TXLOCK_TEST_HELPER=1.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(envHelper) != "1" {
		t.Skip("helper process for TestMutualExclusionProcesses")
	}
	verifyNoGoroutineLeak(t)
	table := os.Getenv(envHelperTable)
	proc, err1 := strconv.Atoi(os.Getenv(envHelperProc))
	procs, err2 := strconv.Atoi(os.Getenv(envHelperProcs))
	if table == "" || err1 != nil || err2 != nil {
		t.Fatalf("bad helper environment: table %q, proc %v, procs %v", table, err1, err2)
	}
	db := testdb.Open(t)
	testdb.NoLeaks(t, db)
	runProcess(t, db, table, proc, procs)
}

// TestMutualExclusionProcesses: three child processes (this test binary
// re-executed) and the parent increment the same counter row under the
// same key of the same table. Each critical section records its interval in
// server time (NOW(6)); the count is exact and no two intervals overlap.
func TestMutualExclusionProcesses(t *testing.T) {
	e := setup(t)
	c := e.createCounter(t, true)
	_ = e.businessTable(t, "ready", "proc INT NOT NULL PRIMARY KEY")
	if want, _ := processCounter(e.table); want != c {
		t.Fatalf("counter tables %+v, want %+v", c, want)
	}
	dsn, err := testdb.DSN()
	if err != nil {
		t.Fatal(err)
	}
	const procs = childProcs + 1
	type child struct {
		cmd *exec.Cmd
		out *lockedBuffer
	}
	var children []child
	for i := 1; i <= childProcs; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(),
			envHelper+"=1",
			envHelperTable+"="+e.table,
			envHelperProc+"="+strconv.Itoa(i),
			envHelperProcs+"="+strconv.Itoa(procs),
			testdb.EnvDSN+"="+dsn,
		)
		out := &lockedBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting child %d: %v", i, err)
		}
		children = append(children, child{cmd, out})
	}
	t.Cleanup(func() {
		for _, ch := range children {
			if ch.cmd.ProcessState == nil {
				_ = ch.cmd.Process.Kill()
				_ = ch.cmd.Wait()
			}
		}
	})
	start := time.Now()
	runProcess(t, e.db, e.table, 0, procs)
	for i, ch := range children {
		if err := ch.cmd.Wait(); err != nil {
			t.Errorf("child %d: %v\n%s", i+1, err, ch.out.String())
		}
	}
	if t.Failed() {
		return
	}
	total := procs * perProcess
	if got := c.value(t, e.db); got != int64(total) {
		t.Fatalf("counter = %d, want %d: updates were lost", got, total)
	}
	switches := c.checkIntervals(t, e.db, total)
	var used int
	if err := e.db.Raw("SELECT COUNT(DISTINCT proc) FROM `" + c.iv + "`").Row().Scan(&used); err != nil {
		t.Fatal(err)
	}
	if used != procs {
		t.Fatalf("%d processes recorded critical sections, want %d", used, procs)
	}
	t.Logf("%d processes, %d critical sections, %d hand-offs between processes, %v",
		procs, total, switches, time.Since(start).Round(time.Millisecond))
}

// lockedBuffer collects a child's output.
type lockedBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
