package sample

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/decorator"
	"github.com/txlock/txlock/internal/testdb"
)

func TestMain(m *testing.M) { testdb.Main(m) }

// impl is a Service that reports, on each call, whether its ctx carries a
// transaction and whether the key it expects is held by someone else than
// a fresh transaction.
type impl struct {
	t      *testing.T
	db     *gorm.DB
	table  string
	locker *dblock.Locker
	want   dblock.Key // the key the current call must hold; zero: none
	calls  int
	err    error // returned by the methods
}

func (s *impl) check(ctx context.Context) {
	s.t.Helper()
	s.calls++
	_, inTx := dblock.TxFrom(ctx)
	if s.want.IsZero() {
		if inTx {
			s.t.Error("a pass-through method runs in a transaction")
		}
		return
	}
	if !inTx {
		s.t.Error("a locked method runs without the lock's transaction")
	}
	lk, err := s.locker.TryLock(context.Background(), s.want)
	if err == nil {
		_ = lk.Rollback()
		s.t.Errorf("%s is not held during the call", s.want)
	} else if !errors.Is(err, dblock.ErrNotAcquired) {
		s.t.Error(err)
	}
}

// inTx counts a call, and reports one that runs outside a transaction.
func (s *impl) inTx(ctx context.Context) {
	s.t.Helper()
	s.calls++
	if _, ok := dblock.TxFrom(ctx); !ok {
		s.t.Error("a locked method runs without the lock's transaction")
	}
}

func (s *impl) Refund(ctx context.Context, req RefundRequest) (Receipt, error) {
	s.check(ctx)
	return Receipt{OrderID: req.OrderID, Amount: req.Amount}, s.err
}
func (s *impl) Cancel(ctx context.Context, _ *CancelRequest) error { s.check(ctx); return s.err }
func (s *impl) Transfer(ctx context.Context, req *TransferRequest) (int64, time.Time, error) {
	s.check(ctx)
	return req.Amount, time.Unix(1, 0), s.err
}
func (s *impl) Ship(ctx context.Context, _ int64, _ Region, _ *Warehouse) error {
	s.check(ctx)
	return s.err
}
func (s *impl) Audit(ctx context.Context) error { s.check(ctx); return s.err }
func (s *impl) Rebuild(ctx context.Context, tags ...string) (int, error) {
	s.check(ctx)
	return len(tags), s.err
}
func (s *impl) Report(ctx context.Context, _ Day, _ string) ([]byte, error) {
	s.check(ctx)
	return []byte("r"), s.err
}
func (s *impl) Renamed(ctx context.Context, _ string) error { s.check(ctx); return s.err }
func (s *impl) Nightly(ctx context.Context) error           { s.check(ctx); return s.err }
func (s *impl) Get(ctx context.Context, id string) (Receipt, error) {
	s.check(ctx)
	return Receipt{OrderID: id}, s.err
}
func (s *impl) Lookup(ctx context.Context, id string) (Receipt, error) {
	s.check(ctx)
	return Receipt{OrderID: id}, s.err
}
func (s *impl) Book(ctx context.Context, _ BookRequest) error { s.check(ctx); return s.err }
func (s *impl) Put(ctx context.Context, _ Receipt) error      { s.check(ctx); return s.err }
func (s *impl) Ping() bool                                    { s.calls++; return true }
func (s *impl) Close() error                                  { s.calls++; return nil }

// Export and Archive hold a permit, not the key: check cannot tell it
// (TestProxySemaphore does).
func (s *impl) Export(ctx context.Context, _ string) (int64, error) { s.inTx(ctx); return 1, s.err }
func (s *impl) Archive(ctx context.Context, _ Day) error            { s.inTx(ctx); return s.err }

func setup(t *testing.T) (*impl, *LockedService) {
	t.Helper()
	db := testdb.Open(t)
	table := testdb.Table(t, db)
	testdb.NoLeaks(t, db)
	locker, err := dblock.New(db, dblock.Table(table))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = locker.Close() })
	s := &impl{t: t, db: db, table: table, locker: locker}
	return s, NewLockedService(s, locker)
}

func TestProxyLocksTheDirectedKeys(t *testing.T) {
	t.Parallel()
	s, p := setup(t)
	ctx := decorator.ContextWithUser(context.Background(), "u-7")
	for _, c := range []struct {
		name string
		want dblock.Key
		call func() error
	}{
		{"Refund", dblock.Resource("order:42"), func() error {
			r, err := p.Refund(ctx, RefundRequest{OrderID: "42", Amount: 5})
			if r.Amount != 5 {
				t.Errorf("Refund result %+v", r)
			}
			return err
		}},
		{"Cancel", dblock.Key{User: "u-7", Resource: "order:42"}, func() error { return p.Cancel(ctx, &CancelRequest{OrderID: "42"}) }},
		{"Transfer", dblock.Key{User: "a-1", Operation: "transfer"}, func() error {
			n, _, err := p.Transfer(ctx, &TransferRequest{From: &Account{ID: "a-1"}, Amount: 3})
			if n != 3 {
				t.Errorf("Transfer result %d", n)
			}
			return err
		}},
		{"Ship", dblock.Resource("ship:9:2:wh-lyon"), func() error { return p.Ship(ctx, 9, 2, &Warehouse{Site: "lyon"}) }},
		{"Audit", dblock.Method("Service.Audit"), func() error { return p.Audit(ctx) }},
		{"Rebuild", dblock.Global(), func() error {
			n, err := p.Rebuild(ctx, "a", "b")
			if n != 2 {
				t.Errorf("Rebuild result %d", n)
			}
			return err
		}},
		{"Report", dblock.Resource("report:2024-02-29"), func() error { _, err := p.Report(ctx, Day{2024, 2, 29}, "csv"); return err }},
		{"Renamed", dblock.Key{Method: "sample.Renamed", Resource: "tenant:t-1"}, func() error { return p.Renamed(ctx, "t-1") }},
		{"Book", dblock.Resource("slot:2024-02-29T08:30:00.5Z"), func() error {
			return p.Book(ctx, BookRequest{At: time.Date(2024, 2, 29, 9, 30, 0, 5e8, time.FixedZone("CET", 3600))})
		}},
		{"Lookup (shared)", dblock.Resource("order:42"), func() error {
			r, err := p.Lookup(ctx, "42")
			if r.OrderID != "42" {
				t.Errorf("Lookup result %+v", r)
			}
			return err
		}},
		{"Put (from the embedded Store[Receipt])", dblock.Resource("receipt:42"), func() error { return p.Put(ctx, Receipt{OrderID: "42"}) }},
		{"Get (pass-through)", dblock.Key{}, func() error { _, err := p.Get(ctx, "42"); return err }},
	} {
		s.want, s.calls = c.want, 0
		if err := c.call(); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		if s.calls != 1 {
			t.Errorf("%s: the implementation was called %d times", c.name, s.calls)
		}
	}
	if !p.Ping() || p.Close() != nil {
		t.Error("pass-through without ctx")
	}
}

func TestProxyErrors(t *testing.T) {
	t.Parallel()
	s, p := setup(t)
	ctx := context.Background()

	// Keys that cannot be computed: the error names the method, the key
	// term and the value; nothing is called.
	s.calls = 0
	for _, c := range []struct {
		name, want string
		err        error
	}{
		{"nil request", "Service.Cancel: dblock: invalid key: resource: req is nil",
			p.Cancel(decorator.ContextWithUser(ctx, "u-7"), nil)},
		{"no user in ctx", "Service.Cancel: dblock: invalid key: user: ctx carries no user: put it there with decorator.ContextWithUser",
			p.Cancel(ctx, &CancelRequest{OrderID: "42"})},
		{"nil nested field", "Service.Transfer: dblock: invalid key: user: req.From is nil",
			func() error { _, _, err := p.Transfer(ctx, &TransferRequest{}); return err }()},
		{"empty nested field", "Service.Transfer: dblock: invalid key: user: req.From.ID is empty",
			func() error { _, _, err := p.Transfer(ctx, &TransferRequest{From: &Account{}}); return err }()},
		{"empty field", "Service.Refund: dblock: invalid key: resource: req.OrderID is empty",
			func() error { _, err := p.Refund(ctx, RefundRequest{}); return err }()},
		{"empty field of an embedded interface's method", "Service.Put: dblock: invalid key: resource: item.OrderID is empty",
			p.Put(ctx, Receipt{})},
		{"nil Stringer", "Service.Ship: dblock: invalid key: resource: wh is nil", p.Ship(ctx, 1, 1, nil)},
		{"empty String()", "Service.Ship: dblock: invalid key: resource: wh has an empty String()", p.Ship(ctx, 1, 1, &Warehouse{})},
		{"empty placeholder", "Service.Renamed: dblock: invalid key: resource: strconv is empty", p.Renamed(ctx, "")},
		{"zero time", "Service.Book: dblock: invalid key: resource: req.At is the zero time.Time", p.Book(ctx, BookRequest{})},
		{"key function's zero key", "Service.Report: dblock: invalid key: reportKey returned the zero dblock.Key",
			func() error { _, err := p.Report(ctx, Day{}, "csv"); return err }()},
	} {
		if !errors.Is(c.err, dblock.ErrInvalidKey) {
			t.Errorf("%s: %v, want ErrInvalidKey", c.name, c.err)
		} else if c.err.Error() != c.want {
			t.Errorf("%s:\n got %q\nwant %q", c.name, c.err, c.want)
		}
	}
	if s.calls != 0 {
		t.Errorf("the implementation was called %d times with invalid keys", s.calls)
	}

	// nowait on a held key: ErrNotAcquired at once, zero results.
	held, err := s.locker.Lock(ctx, dblock.Global())
	if err != nil {
		t.Fatal(err)
	}
	n, err := p.Rebuild(ctx, "a")
	_ = held.Rollback()
	if !errors.Is(err, dblock.ErrNotAcquired) || n != 0 {
		t.Errorf("Rebuild on a held key: %d, %v; want 0, ErrNotAcquired", n, err)
	}
	if err == nil || !strings.HasPrefix(err.Error(), "Service.Rebuild: dblock: lock not acquired") {
		t.Errorf("the lock error %q does not start with the method's name", err)
	}

	// The implementation's errors pass unchanged, with its results.
	s.err = errors.New("boom")
	s.want = dblock.Resource("order:1")
	r, err := p.Refund(ctx, RefundRequest{OrderID: "1", Amount: 2})
	if err != s.err || r.Amount != 2 {
		t.Errorf("Refund with a failing implementation: %+v, %v", r, err)
	}
}

// One instant locks one key, whatever its zone and monotonic reading; an
// integer type locks on its number, not on its String.
func TestProxyKeysAreCanonical(t *testing.T) {
	t.Parallel()
	var p LockedService
	ctx := context.Background()
	book := func(at time.Time) dblock.Key {
		k, err := p.lockKeyBook(ctx, BookRequest{At: at})
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	now := time.Now() // with a monotonic reading
	want := book(now.Round(0))
	for name, at := range map[string]time.Time{
		"monotonic":       now,
		"another zone":    now.In(time.FixedZone("X", -7*3600)),
		"UTC, no reading": now.UTC().Round(0),
	} {
		if got := book(at); got != want {
			t.Errorf("%s: %s, want %s (the same instant)", name, got, want)
		}
	}
	if got, next := want, book(now.Add(time.Nanosecond)); got == next {
		t.Errorf("instants 1ns apart lock one key %s", got)
	}
	t.Logf("time.Now() locks %s", want)
	if got, err := p.lockKeyShip(ctx, 9, Region(2), &Warehouse{Site: "lyon"}); err != nil || got != dblock.Resource("ship:9:2:wh-lyon") || Region(2).String() != "region-2" {
		t.Errorf("Region(2), whose String is %q, locks %s (%v), want its number: ship:9:2:wh-lyon", Region(2), got, err)
	}
}

// deadlocking is a Service whose Rebuild writes row x of a business table.
type deadlocking struct {
	*impl
	rebuild func(ctx context.Context) (int, error)
}

func (d deadlocking) Rebuild(ctx context.Context, _ ...string) (int, error) { return d.rebuild(ctx) }

// With a Locker whose default options retry deadlocks, a proxy call whose
// first attempt is a deadlock victim and whose second cannot take the key
// returns ErrNotAcquired, named after the method, and zero results, not
// those of the attempt that was rolled back. The first attempt holds the
// key and waits for row x, which a heavier transaction (64 rows written)
// holds; that one then asks for the key: the server rolls back the
// lighter, the call's.
func TestProxyRetryAfterDeadlockReturnsZeroResults(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t)
	table := testdb.Table(t, db)
	testdb.NoLeaks(t, db)
	locker, err := dblock.New(db, dblock.Table(table), dblock.Defaults(dblock.Retry(2)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = locker.Close() })
	biz := table + "_biz"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, q := range []string{"CREATE TABLE `" + biz + "` (name VARCHAR(64) PRIMARY KEY, v BIGINT NOT NULL) ENGINE=InnoDB", "INSERT INTO `" + biz + "` VALUES ('x', 0)"} {
		if err := db.WithContext(ctx).Exec(q).Error; err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { db.Exec("DROP TABLE IF EXISTS `" + biz + "`") })
	writeX := "UPDATE `" + biz + "` SET v = v + 1 WHERE name = 'x'"

	var runs atomic.Int32
	held := make(chan struct{})
	p := NewLockedService(deadlocking{impl: &impl{t: t, locker: locker}, rebuild: func(ctx context.Context) (int, error) {
		if runs.Add(1) == 1 {
			close(held)
		}
		return 7, dblock.DB(ctx, db).Exec(writeX).Error
	}}, locker)

	heavy := db.WithContext(ctx).Begin()
	defer heavy.Rollback()
	for i := range 64 {
		if err := heavy.Exec("INSERT INTO `"+biz+"` VALUES (?, 1)", fmt.Sprint("w", i)).Error; err != nil {
			t.Fatal(err)
		}
	}
	if err := heavy.Exec(writeX).Error; err != nil {
		t.Fatal(err)
	}
	var n int
	done := make(chan struct{})
	go func() { defer close(done); n, err = p.Rebuild(ctx) }()
	select {
	case <-held:
	case <-done:
		t.Fatalf("Rebuild returned %d, %v before its first attempt held the key", n, err)
	}
	if lerr := locker.LockTx(ctx, heavy, dblock.Global()); lerr != nil {
		<-done
		t.Fatalf("the heavy transaction asking for the key: %v (want it to win the deadlock)", lerr)
	}
	<-done
	t.Logf("Rebuild ran %d time(s) and returned %d, %v", runs.Load(), n, err)
	if runs.Load() != 1 || !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("runs %d, err %v: want 1 run and ErrNotAcquired from attempt 2", runs.Load(), err)
	}
	if n != 0 {
		t.Errorf("Rebuild returned %d beside ErrNotAcquired, want 0 (attempt 1 was rolled back)", n)
	}
	if !strings.HasPrefix(err.Error(), "Service.Rebuild: ") {
		t.Errorf("error %q does not name the method", err)
	}
}

// A proxy given a nil inner or locker does not panic: its methods that
// return an error say what is missing, at each call, and take no lock.
func TestProxyWithoutImplementationOrLocker(t *testing.T) {
	t.Parallel()
	s, withLocker := setup(t)
	ctx := context.Background()
	noInner := NewLockedService(nil, withLocker.locker)
	const missing = ": no implementation: NewLockedService was given a nil inner; pass it an implementation of Service"
	for range 2 {
		r, err := noInner.Refund(ctx, RefundRequest{OrderID: "1", Amount: 5})
		if err == nil || err.Error() != "Service.Refund"+missing || r != (Receipt{}) {
			t.Errorf("locked method, nil inner: %+v, %v", r, err)
		}
		n, at, err := noInner.Transfer(ctx, &TransferRequest{From: &Account{ID: "a"}})
		if err == nil || err.Error() != "Service.Transfer"+missing || n != 0 || !at.IsZero() {
			t.Errorf("locked method with several results, nil inner: %d, %v, %v", n, at, err)
		}
		if _, err := noInner.Get(ctx, "1"); err == nil || err.Error() != "Service.Get"+missing {
			t.Errorf("pass-through method, nil inner: %v", err)
		}
		if err := noInner.Close(); err == nil || err.Error() != "Service.Close"+missing {
			t.Errorf("pass-through method without ctx, nil inner: %v", err)
		}
	}

	noLocker := NewLockedService(s, nil)
	_, err := noLocker.Refund(ctx, RefundRequest{OrderID: "1"})
	if want := "Service.Refund: nil *dblock.Locker: pass the Locker that dblock.New returns"; err == nil || err.Error() != want {
		t.Errorf("locked method, nil locker: %v, want %q", err, want)
	}
	if s.calls != 0 {
		t.Errorf("the implementation was called %d times by a locked method without a locker", s.calls)
	}
	s.want = dblock.Key{} // a pass-through needs no locker
	if r, err := noLocker.Get(ctx, "7"); err != nil || r.OrderID != "7" {
		t.Errorf("pass-through method, nil locker: %+v, %v", r, err)
	}
}

// TestProxyScheduledJob: a method directed with mininterval runs once per
// interval across callers (the second call is dblock.ErrTooSoon and does
// not reach the implementation), and its maxhold bound is in force.
func TestProxyScheduledJob(t *testing.T) {
	s, p := setup(t)
	ctx := context.Background()
	s.want = dblock.Operation("nightly")
	if err := p.Nightly(ctx); err != nil {
		t.Fatalf("first Nightly: %v", err)
	}
	if s.calls != 1 {
		t.Fatalf("first Nightly made %d calls, want 1", s.calls)
	}
	err := p.Nightly(ctx)
	t.Logf("second Nightly within the hour: %v", err)
	if !errors.Is(err, dblock.ErrTooSoon) {
		t.Fatalf("second Nightly = %v, want ErrTooSoon", err)
	}
	if s.calls != 1 {
		t.Errorf("the second Nightly reached the implementation (%d calls)", s.calls)
	}
}

// sharing is a Service whose Lookup runs lookup.
type sharing struct {
	*impl
	lookup func(ctx context.Context, id string) (Receipt, error)
}

func (s sharing) Lookup(ctx context.Context, id string) (Receipt, error) { return s.lookup(ctx, id) }

// TestProxySharedLock: a method directed with shared holds its key shared.
// While one call holds it, another call of that method (another
// transaction) runs, and an exclusive method of the key (Refund) is
// refused; a call of the exclusive method inside the shared one, with its
// ctx, is refused with dblock.ErrUpgrade; while an exclusive holder has the
// key, the shared method is refused and its implementation not called.
func TestProxySharedLock(t *testing.T) {
	t.Parallel()
	s, _ := setup(t)
	ctx := context.Background()
	bounded := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 300*time.Millisecond) }
	var p *LockedService
	var calls atomic.Int32
	p = NewLockedService(sharing{impl: s, lookup: func(lctx context.Context, id string) (Receipt, error) {
		if calls.Add(1) > 1 {
			return Receipt{OrderID: id}, nil // the inner call
		}
		// Another transaction's shared call of the same key runs now.
		done := make(chan error, 1)
		go func() {
			bctx, cancel := bounded()
			defer cancel()
			_, err := p.Lookup(bctx, id)
			done <- err
		}()
		if err := <-done; err != nil {
			t.Errorf("a second Lookup while the first holds the key shared: %v", err)
		}
		// An exclusive method of the key, from another transaction: refused.
		bctx, cancel := bounded()
		defer cancel()
		if _, err := p.Refund(bctx, RefundRequest{OrderID: id}); !errors.Is(err, dblock.ErrNotAcquired) {
			t.Errorf("Refund (exclusive) while Lookup holds the key shared = %v, want ErrNotAcquired", err)
		}
		// The exclusive method in this transaction: no upgrade.
		_, err := p.Refund(lctx, RefundRequest{OrderID: id})
		if !errors.Is(err, dblock.ErrUpgrade) || !strings.HasPrefix(err.Error(), "Service.Refund: ") {
			t.Errorf("Refund inside Lookup of the same key = %v, want Service.Refund: ... ErrUpgrade", err)
		}
		return Receipt{OrderID: id}, nil
	}}, s.locker)
	if r, err := p.Lookup(ctx, "42"); err != nil || r.OrderID != "42" {
		t.Fatalf("Lookup: %+v, %v", r, err)
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("the implementation of Lookup ran %d times, want 2 (the call and the one beside it)", n)
	}

	held, err := s.locker.Lock(ctx, dblock.Resource("order:42"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Rollback()
	bctx, cancel := bounded()
	defer cancel()
	_, err = p.Lookup(bctx, "42")
	t.Logf("Lookup beside an exclusive holder: %v", err)
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Errorf("Lookup beside an exclusive holder = %v, want ErrNotAcquired", err)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("the implementation of Lookup ran beside an exclusive holder (%d runs)", n)
	}
}
