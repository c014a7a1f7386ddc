package sample

import (
	"context"
	"errors"
	"testing"
	"time"

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
func (s *impl) Get(ctx context.Context, id string) (Receipt, error) {
	s.check(ctx)
	return Receipt{OrderID: id}, s.err
}
func (s *impl) Ping() bool   { s.calls++; return true }
func (s *impl) Close() error { s.calls++; return nil }

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
	s := &impl{t: t, locker: locker}
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
		{"Cancel", dblock.User("u-7").WithResource("order:42"), func() error { return p.Cancel(ctx, &CancelRequest{OrderID: "42"}) }},
		{"Transfer", dblock.User("a-1").WithOperation("transfer"), func() error {
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
		{"Renamed", dblock.Method("sample.Renamed").WithResource("tenant:t-1"), func() error { return p.Renamed(ctx, "t-1") }},
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

	// Keys that cannot be computed: nothing is called.
	s.calls = 0
	for name, err := range map[string]error{
		"nil request":       p.Cancel(decorator.ContextWithUser(ctx, "u-7"), nil),
		"no user in ctx":    p.Cancel(ctx, &CancelRequest{OrderID: "42"}),
		"nil nested field":  func() error { _, _, err := p.Transfer(ctx, &TransferRequest{}); return err }(),
		"empty field":       func() error { _, err := p.Refund(ctx, RefundRequest{}); return err }(),
		"nil Stringer":      p.Ship(ctx, 1, 1, nil),
		"empty placeholder": p.Renamed(ctx, ""),
	} {
		if !errors.Is(err, dblock.ErrInvalidKey) {
			t.Errorf("%s: %v, want ErrInvalidKey", name, err)
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

	// The implementation's errors pass unchanged, with its results.
	s.err = errors.New("boom")
	s.want = dblock.Resource("order:1")
	r, err := p.Refund(ctx, RefundRequest{OrderID: "1", Amount: 2})
	if err != s.err || r.Amount != 2 {
		t.Errorf("Refund with a failing implementation: %+v, %v", r, err)
	}
}
