package dblock_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/schema"
)

// serverUnix returns the server's clock, in Unix seconds.
func serverUnix(t *testing.T, db *gorm.DB) int64 {
	t.Helper()
	var now int64
	if err := db.Raw("SELECT UNIX_TIMESTAMP()").Row().Scan(&now); err != nil {
		t.Fatal(err)
	}
	return now
}

// wantHolder fails the test unless h names connection conn with label.
func wantHolder(t *testing.T, what string, h dblock.Holder, err error, key dblock.Key, conn int64, label string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: Holder(%s) = %v", what, key, err)
	}
	if h.Key != key || h.ConnID != conn || h.Label != label || h.Host == "" || h.User == "" {
		t.Fatalf("%s: Holder(%s) = %+v, want connection %d labelled %q (with user and host)", what, key, h, conn, label)
	}
}

// twoLockers sets up the test's table and two labelled Lockers on it: one
// on another pool (returned), one on the test's pool.
func twoLockers(t *testing.T, onOther, onMain string) (e env, ctx context.Context, other *gorm.DB, lo, lm *dblock.Locker) {
	t.Helper()
	e = setup(t)
	other = otherPool(t)
	return e, ctxT(t), other, labelled(t, e, other, onOther), labelled(t, e, e.db, onMain)
}

// lockLater takes key with Lock in a goroutine, and sends the Lock (nil
// after an error, which fails the test) when it is granted.
func lockLater(t *testing.T, ctx context.Context, l *dblock.Locker, key dblock.Key) <-chan *dblock.Lock {
	granted := make(chan *dblock.Lock, 1)
	go func() {
		lk, err := l.Lock(ctx, key)
		if err != nil {
			t.Errorf("waiter: %v", err)
		}
		granted <- lk
	}()
	return granted
}

// labelled returns a Locker on the test's table through db, labelled.
func labelled(t *testing.T, e env, db *gorm.DB, label string, opts ...dblock.Option) *dblock.Locker {
	t.Helper()
	l, err := dblock.New(db, append([]dblock.Option{dblock.Table(e.table), dblock.Label(label)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// TestHolderNamesConnectionAndLabel: two Lockers with different labels on
// separate pools each hold a key; Holder, asked through either, names the
// holding connection, its label and a plausible start, and the waiters;
// ErrNotHeld when free, never locked, and after release.
func TestHolderNamesConnectionAndLabel(t *testing.T) {
	e, ctx, _, lb, la := twoLockers(t, "pod-b", "pod-a")
	ka, kb := dblock.Resource("order:1"), dblock.Resource("order:2")

	before := serverUnix(t, e.db)
	a := holdKey(t, ctx, la, ka)
	b := holdKey(t, ctx, lb, kb)
	after := serverUnix(t, e.db)
	connA, connB := connectionID(t, a.Tx()), connectionID(t, b.Tx())

	start := time.Now()
	h, err := lb.Holder(ctx, ka)
	t.Logf("Holder of an uncontended key took %v", time.Since(start).Round(time.Millisecond))
	wantHolder(t, "through the other Locker", h, err, ka, connA, "pod-a")
	if s := h.Since.Unix(); s < before || s > after {
		t.Errorf("Since = %v (%d), want within the grant, [%d, %d] on the server's clock", h.Since, s, before, after)
	}
	if len(h.Waiters) != 0 {
		t.Errorf("Waiters = %+v, want none", h.Waiters)
	}
	h, err = la.Holder(ctx, kb)
	wantHolder(t, "of the other Locker's key", h, err, kb, connB, "pod-b")

	// A waiter through lb: reported with its label.
	granted := lockLater(t, ctx, lb, ka)
	if err := waitLockWait(e.db, e.table); err != nil {
		t.Fatal(err)
	}
	h, err = la.Holder(ctx, ka)
	wantHolder(t, "with a waiter", h, err, ka, connA, "pod-a")
	if len(h.Waiters) != 1 || h.Waiters[0].Label != "pod-b" || h.Waiters[0].ConnID == connA {
		t.Fatalf("Waiters = %+v, want the one waiter of pod-b", h.Waiters)
	}
	t.Logf("holder %d (%s, since %v), waiter %d (%s)", h.ConnID, h.Label, h.Since, h.Waiters[0].ConnID, h.Waiters[0].Label)

	if err := a.Rollback(); err != nil {
		t.Fatal(err)
	}
	w := <-granted
	if w == nil {
		t.FailNow()
	}
	h, err = la.Holder(ctx, ka)
	wantHolder(t, "after the hand-over", h, err, ka, connectionID(t, w.Tx()), "pod-b")
	if err := w.Rollback(); err != nil {
		t.Fatal(err)
	}
	if _, err := la.Holder(ctx, ka); !errors.Is(err, dblock.ErrNotHeld) {
		t.Fatalf("Holder after release = %v, want ErrNotHeld", err)
	}
	if _, err := la.Holder(ctx, dblock.Resource("never-locked")); !errors.Is(err, dblock.ErrNotHeld) {
		t.Fatalf("Holder of a key never locked = %v, want ErrNotHeld", err)
	}
	if err := freeForOther(lb, ka); err != nil {
		t.Fatal(err)
	}
}

// TestHolderProbeDoesNotJumpQueue: a waiter queued before a Holder call is
// granted before Holder's probe, which is queued behind it; Holder never
// gets the key itself (it would say ErrNotHeld), and nothing stays held
// after it returns.
func TestHolderProbeDoesNotJumpQueue(t *testing.T) {
	e, ctx, _, lh, li := twoLockers(t, "holder", "inspector")
	key := dblock.Resource("queue")
	for round := range 3 {
		// The waiter on a pool of one connection of its own, new each
		// round: a fill of the server's lock views that shows it waiting
		// is of this round.
		wdb := otherPool(t)
		wsql, err := wdb.DB()
		if err != nil {
			t.Fatal(err)
		}
		wsql.SetMaxOpenConns(1)
		waiterConn := connectionID(t, wdb)
		lw := labelled(t, e, wdb, "waiter")
		held := mustLock(t, ctx, lh, key)
		connH := connectionID(t, held.Tx())
		granted := lockLater(t, ctx, lw, key)
		waitFor(t, "the waiter to queue", func() bool {
			time.Sleep(150 * time.Millisecond) // the views are refreshed after 100 ms without reads
			var n int
			_ = e.db.Raw("SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id = ? AND trx_state = 'LOCK WAIT'", waiterConn).Row().Scan(&n)
			return n == 1
		})
		type result struct {
			h   dblock.Holder
			err error
		}
		res := make(chan result, 1)
		go func() {
			h, err := li.Holder(ctx, key)
			res <- result{h, err}
		}()
		// Release as soon as the probe queues behind the waiter.
		waitFor(t, "Holder's probe to queue", func() bool {
			var n int
			_ = e.db.Raw("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE '%txlock-holder%' AND INFO NOT LIKE '%PROCESSLIST%'").Row().Scan(&n)
			return n == 1
		})
		if err := held.Rollback(); err != nil {
			t.Fatal(err)
		}
		var w *dblock.Lock
		var r result
		var order []string
		for returned := false; w == nil || !returned; {
			select {
			case w = <-granted:
				if w == nil {
					t.FailNow()
				}
				order = append(order, "waiter granted")
			case r = <-res:
				returned = true
				order = append(order, "Holder returned")
			}
		}
		connW := connectionID(t, w.Tx())
		if r.err != nil {
			t.Fatalf("round %d: Holder = %v, want the holder or the waiter named (ErrNotHeld: its probe took the key ahead of the waiter)", round, r.err)
		}
		if r.h.ConnID != connH && r.h.ConnID != connW {
			t.Fatalf("round %d: Holder named %d, want the holder %d or the waiter %d", round, r.h.ConnID, connH, connW)
		}
		t.Logf("round %d: %v; Holder named %q (%d)", round, order, r.h.Label, r.h.ConnID)
		if err := w.Rollback(); err != nil {
			t.Fatal(err)
		}
		if err := freeForOther(lh, key); err != nil {
			t.Fatalf("round %d: after Holder: %v", round, err)
		}
	}
}

// TestHolderIgnoresStaleSessionRow: a session row written before the
// server's start (a past run's connection with the same id) gives no
// label; a current one does.
func TestHolderIgnoresStaleSessionRow(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	l := labelled(t, e, otherPool(t), "current")
	key := dblock.Resource("stale")
	lk := holdKey(t, ctx, l, key)
	conn := connectionID(t, lk.Tx())
	h, err := l.Holder(ctx, key)
	wantHolder(t, "with the current row", h, err, key, conn, "current")

	st := schema.SessionTable(e.table)
	if err := e.db.Exec("UPDATE `"+st+"` SET label = 'past-run', seen = NOW(6) - INTERVAL (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'Uptime') + 5 SECOND WHERE conn_id = ?", conn).Error; err != nil {
		t.Fatal(err)
	}
	h, err = l.Holder(ctx, key)
	wantHolder(t, "with a row of a past run", h, err, key, conn, "")
}

// TestHolderBadInput: a closed Locker, an invalid key, an ended context
// and a bad filter give clear errors, and leave no connection in use.
func TestHolderBadInput(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	if _, err := l.Holder(ctx, dblock.Key{}); !errors.Is(err, dblock.ErrInvalidKey) {
		t.Errorf("Holder(empty key) = %v, want ErrInvalidKey", err)
	}
	if _, err := l.Holders(ctx, dblock.Key{Global: true, User: "u"}); !errors.Is(err, dblock.ErrInvalidKey) {
		t.Errorf("Holders(global and user) = %v, want ErrInvalidKey", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := l.Holder(cancelled, dblock.Resource("x")); !errors.Is(err, context.Canceled) {
		t.Errorf("Holder(cancelled context) = %v, want context.Canceled", err)
	}
	//nolint:staticcheck // a nil context is what is tested
	if _, err := l.Holder(nil, dblock.Resource("x")); err == nil || !strings.Contains(err.Error(), "nil context") {
		t.Errorf("Holder(nil context) = %v, want a nil context error", err)
	}
	var nilLocker *dblock.Locker
	if _, err := nilLocker.Holder(ctx, dblock.Resource("x")); err == nil {
		t.Error("Holder on a nil Locker succeeded")
	}
	l2 := e.locker(t)
	_ = l2.Close()
	if _, err := l2.Holder(ctx, dblock.Resource("x")); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Holder on a closed Locker = %v, want it to say the Locker is closed", err)
	}
}

// probeQueued reports whether Holder's probe is in the process list.
func probeQueued(t *testing.T, db *gorm.DB) bool {
	t.Helper()
	var n int
	if err := db.Raw("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE '%txlock-holder%' AND INFO NOT LIKE '%PROCESSLIST%'").Row().Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

// TestHolderFrozenViews: while another client reads MariaDB's lock views
// every 10 ms (the server then never refreshes their cache), Holder cannot
// see its probe queued: ErrHolderUnknown after its bound, or the context's
// error when that ends first; either way the probe is withdrawn and
// nothing stays held.
func TestHolderFrozenViews(t *testing.T) {
	e, ctx, _, holder, l := twoLockers(t, "holder", "inspector")
	key := dblock.Resource("frozen")
	lk := holdKey(t, ctx, holder, key)

	freezer := otherPool(t)
	stop := make(chan struct{})
	frozen, ready := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(frozen)
		for reads := 1; ; reads++ {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			var n int
			_ = freezer.Raw("SELECT COUNT(*) FROM information_schema.INNODB_LOCK_WAITS").Row().Scan(&n)
			if reads == 3 {
				close(ready) // the cache's last fill is from before Holder's probe
			}
		}
	}()
	defer func() { close(stop); <-frozen }()
	<-ready

	check := func(what string, err error, want error) {
		t.Helper()
		t.Logf("%s: %v", what, err)
		switch {
		case errors.Is(err, want):
		case err == nil:
			t.Logf("%s: the holder was named: the reader stalled for 100 ms (a loaded machine) and the cache was refreshed", what)
		default:
			t.Errorf("%s = %v, want %v", what, err, want)
		}
		if probeQueued(t, e.db) {
			t.Errorf("%s: the probe is still queued after Holder returned", what)
		}
	}
	start := time.Now()
	_, err := l.Holder(ctx, key)
	check(fmt.Sprintf("Holder with frozen views (%v)", time.Since(start).Round(time.Millisecond)), err, dblock.ErrHolderUnknown)

	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := l.Holder(cctx, key)
		done <- err
	}()
	waitFor(t, "Holder's probe to queue", func() bool { return probeQueued(t, e.db) })
	cancel()
	check("Holder cancelled while its probe waits", <-done, context.Canceled)

	if err := lk.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := freeForOther(holder, key); err != nil {
		t.Fatalf("after Holder: %v", err)
	}
}

// TestLabelValidation: Label refuses what the session table cannot hold
// or an operator cannot read.
func TestLabelValidation(t *testing.T) {
	e := setup(t)
	for _, bad := range []string{"", strings.Repeat("x", 256), "a\x00b", "line\nbreak", "\xff"} {
		if l, err := dblock.New(e.db, dblock.Table(e.table), dblock.Label(bad)); err == nil {
			_ = l.Close()
			t.Errorf("Label(%q) accepted", bad)
		}
	}
	l, err := dblock.New(e.db, dblock.Table(e.table), dblock.Label(strings.Repeat("é", 255)))
	if err != nil {
		t.Fatalf("Label of 255 characters: %v", err)
	}
	_ = l.Close()
}

// logBuffer is a JSON log in memory, safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *logBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *logBuffer) lines(substr string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, line := range strings.Split(w.b.String(), "\n") {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return out
}

// TestMissingSessionTable: with the schema at version 1 (no session
// table), locks work on every path, one warning names the fix and carries
// the Locker's label, and Holder names the holder without a label.
func TestMissingSessionTable(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	if err := e.db.Exec("DROP TABLE `" + schema.SessionTable(e.table) + "`").Error; err != nil {
		t.Fatal(err)
	}
	var log logBuffer
	l := labelled(t, e, e.db, "no-table", dblock.Logger(slog.New(slog.NewJSONHandler(&log, nil))))
	e.sqlDB.SetMaxIdleConns(4)
	var wg sync.WaitGroup
	for i := range 4 { // several connections, each new to the Locker
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.Do(ctx, dblock.Resource("k"+string(rune('a'+i))), nop); err != nil {
				t.Errorf("Do: %v", err)
			}
		}()
	}
	wg.Wait()
	if err := e.db.Transaction(func(tx *gorm.DB) error { return l.LockTx(ctx, tx, dblock.Resource("tx")) }); err != nil {
		t.Fatalf("LockTx: %v", err)
	}
	lk := holdKey(t, ctx, l, dblock.Resource("held"))
	h, err := l.Holder(ctx, dblock.Resource("held"))
	wantHolder(t, "without the session table", h, err, dblock.Resource("held"), connectionID(t, lk.Tx()), "")
	warnings := log.lines("session table")
	if len(warnings) != 1 || !strings.Contains(warnings[0], "txlock migrate up") || !strings.Contains(warnings[0], `"label":"no-table"`) {
		t.Fatalf("warnings about the session table: %q, want one naming `txlock migrate up` with the label", warnings)
	}
	t.Logf("warning: %s", warnings[0])
}

// TestLabelOfCallerTransaction: a connection first met in a caller's
// transaction (LockTx) gets its label at once, written outside that
// transaction: visible to others before it commits, and kept after it
// rolls back.
func TestLabelOfCallerTransaction(t *testing.T) {
	e, ctx, other, lc, li := twoLockers(t, "caller", "inspector")
	key := dblock.Resource("in-tx")
	tx := other.Begin()
	if tx.Error != nil {
		t.Fatal(tx.Error)
	}
	defer tx.Rollback()
	if err := lc.LockTx(ctx, tx, key); err != nil {
		t.Fatal(err)
	}
	conn := connectionID(t, tx)
	h, err := li.Holder(ctx, key)
	wantHolder(t, "in a caller's transaction", h, err, key, conn, "caller")
	if err := tx.Rollback().Error; err != nil {
		t.Fatal(err)
	}
	row := func() (label, seen string) {
		t.Helper()
		if err := e.db.Raw("SELECT label, CAST(seen AS CHAR) FROM `"+schema.SessionTable(e.table)+"` WHERE conn_id = ?", conn).Row().Scan(&label, &seen); err != nil {
			t.Fatalf("session row of %d: %v", conn, err)
		}
		return label, seen
	}
	label, seen := row()
	if label != "caller" {
		t.Fatalf("session row after the caller's rollback: %q; want it kept", label)
	}
	// Later transactions on the same connection write nothing (seen would
	// change): the Locker knows the connection.
	sqlOther, err := other.DB()
	if err != nil {
		t.Fatal(err)
	}
	sqlOther.SetMaxOpenConns(1)
	for range 3 {
		if err := other.Transaction(func(tx *gorm.DB) error {
			if id := connectionID(t, tx); id != conn {
				t.Fatalf("the pool of one connection used connection %d, then %d", conn, id)
			}
			return lc.LockTx(ctx, tx, key)
		}); err != nil {
			t.Fatal(err)
		}
	}
	if _, again := row(); again != seen {
		t.Errorf("the session row was written again (seen %s, then %s) for a connection the Locker knew", seen, again)
	}
}

// TestHoldersListing: Holders lists the held keys matching a filter
// (every key, a resource prefix, a field), each with its holder.
func TestHoldersListing(t *testing.T) {
	_, ctx, _, lb, la := twoLockers(t, "pod-b", "pod-a")
	want := map[dblock.Key]string{}
	hold := func(l *dblock.Locker, key dblock.Key, label string) {
		holdKey(t, ctx, l, key)
		want[key] = label
	}
	hold(la, dblock.Resource("order:1"), "pod-a")
	hold(lb, dblock.Resource("order:2"), "pod-b")
	hold(lb, dblock.Key{User: "u-7", Operation: "refund"}, "pod-b")
	if err := la.Do(ctx, dblock.Resource("order:3"), nop); err != nil { // free: not listed
		t.Fatal(err)
	}
	for _, c := range []struct {
		filter dblock.Key
		n      int
	}{
		{dblock.Key{}, 3},
		{dblock.Resource("order:*"), 2},
		{dblock.Resource("order:1"), 1},
		{dblock.User("u-7"), 1},
		{dblock.Resource("order_*"), 0}, // "_" is not a wildcard
		{dblock.Global(), 0},
	} {
		start := time.Now()
		hs, err := la.Holders(ctx, c.filter)
		if err != nil {
			t.Fatalf("Holders(%+v): %v", c.filter, err)
		}
		t.Logf("Holders(%+v): %d in %v", c.filter, len(hs), time.Since(start).Round(time.Millisecond))
		if len(hs) != c.n {
			t.Fatalf("Holders(%+v) = %+v, want %d", c.filter, hs, c.n)
		}
		for _, h := range hs {
			if label, ok := want[h.Key]; !ok || h.Label != label || h.ConnID == 0 {
				t.Errorf("Holders(%+v): %+v, want holder labelled %q", c.filter, h, label)
			}
		}
	}
}

// TestHolderConcurrentCalls: Holder calls at the same time through one
// Locker name the holder (their reads of MariaDB's lock views, which the
// server refreshes only after 100 ms without reads, must not keep each
// other from seeing their probes). Readers outside the test (other tests
// in other processes) can keep the cache stale: a call may then return
// ErrHolderUnknown, as documented, but never a wrong holder, and not
// every call.
func TestHolderConcurrentCalls(t *testing.T) {
	_, ctx, _, holder, l := twoLockers(t, "holder", "inspector")
	key := dblock.Resource("busy")
	lk := holdKey(t, ctx, holder, key)
	conn := connectionID(t, lk.Tx())
	const calls = 8
	errs := make(chan error, calls)
	start := time.Now()
	for i := range calls {
		go func() {
			// Staggered: their reads of the views interleave.
			time.Sleep(time.Duration(i) * 35 * time.Millisecond)
			h, err := l.Holder(ctx, key)
			if err == nil && h.ConnID != conn {
				err = fmt.Errorf("named %d, want %d", h.ConnID, conn)
			}
			errs <- err
		}()
	}
	named, unknown := 0, 0
	for range calls {
		switch err := <-errs; {
		case err == nil:
			named++
		case errors.Is(err, dblock.ErrHolderUnknown):
			// Documented: other clients (other tests, in other processes)
			// reading the views more often than every 100 ms keep the
			// server's cache from showing the probes.
			unknown++
		default:
			t.Errorf("concurrent Holder: %v", err)
		}
	}
	t.Logf("%d concurrent Holder calls in %v: %d named the holder, %d ErrHolderUnknown", calls, time.Since(start).Round(time.Millisecond), named, unknown)
	if named == 0 {
		t.Errorf("none of %d concurrent Holder calls named the holder: they keep each other from seeing their probes", calls)
	}
}
