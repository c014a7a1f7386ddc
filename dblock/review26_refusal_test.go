package dblock_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"

	"github.com/txlock/txlock/dblock"
)

// r26Meters is a MeterProvider whose txlock.waiting counter calls onDone
// when a locking read has returned (Add of -1): the moment between a
// NoWait read refused with 1205 and the library's next statement.
type r26Meters struct {
	metricnoop.MeterProvider
	onDone atomic.Pointer[func()]
}

func (p *r26Meters) Meter(string, ...metric.MeterOption) metric.Meter { return r26Meter{p: p} }

type r26Meter struct {
	metricnoop.Meter
	p *r26Meters
}

func (m r26Meter) Int64UpDownCounter(name string, _ ...metric.Int64UpDownCounterOption) (metric.Int64UpDownCounter, error) {
	return r26Waiting{p: m.p}, nil
}

type r26Waiting struct {
	metricnoop.Int64UpDownCounter
	p *r26Meters
}

func (w r26Waiting) Add(_ context.Context, delta int64, _ ...metric.AddOption) {
	if f := w.p.onDone.Load(); delta < 0 && f != nil {
		(*f)()
	}
}

// TestReview26RefusalAfterCancelClaimsLockLost: a caller's transaction
// holds key a and tries key b, held by another process, with NoWait. The
// zero-lock-wait read is refused with 1205; the caller's context is
// cancelled right then (a request abandoned by its client; here, from
// the telemetry hook that runs between the two statements). The library
// then asks the transaction "SELECT @@in_transaction" under that
// cancelled context: database/sql refuses to send it, and the library
// reports ErrNotAcquired + ErrLockLost ("the server may have rolled it
// back"). Nothing was rolled back: the statement was never sent, the
// transaction is open and still holds a (another process is refused a),
// and it commits its writes. Before the change (SKIP LOCKED) the same
// refusal was a plain ErrNotAcquired.
//
// Expected: a refusal whose follow-up question could not be asked because
// the caller's own context ended is not reported as a lost lock (report
// the refusal, or the context's end; or ask under a context the caller's
// cancellation does not end, as the library does for KILL QUERY).
//
// Fixed: the question is asked under a context the caller's cancellation
// does not end, bounded by killTimeout.
func TestReview26RefusalAfterCancelClaimsLockLost(t *testing.T) {
	e := setup(t)
	mp := &r26Meters{}
	l := e.locker(t, dblock.MeterProvider(mp))
	defer l.Close()
	other := e.locker(t)
	defer other.Close()
	kv := e.kvTable(t)
	ctx := ctxT(t)
	a, b := dblock.Resource("r26:cancel-a"), dblock.Resource("r26:cancel-b")
	holdKey(t, ctx, other, b)

	tx := e.db.WithContext(ctx).Begin()
	defer tx.Rollback()
	if err := l.LockTx(ctx, tx, a); err != nil {
		t.Fatal(err)
	}
	if err := put(tx, kv, "before", 1); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hook := func() { cancel() }
	mp.onDone.Store(&hook)
	err := l.LockTx(cctx, tx, b, dblock.NoWait())
	mp.onDone.Store(nil)
	t.Logf("LockTx(b, NoWait) refused, its context cancelled right after the read: %v", err)

	held := heldByOther(other, a)
	t.Logf("another process's TryLock(a) after it: %v (nil: refused, a is still held)", held)
	if werr := put(tx, kv, "after", 1); werr != nil {
		t.Fatalf("a write after the refusal: %v", werr)
	}
	if cerr := tx.Commit().Error; cerr != nil {
		t.Fatalf("Commit: %v", cerr)
	}
	if bv, av := get(t, e.db, kv, "before"), get(t, e.db, kv, "after"); bv != 1 || av != 1 {
		t.Fatalf("writes before=%d after=%d, want both committed", bv, av)
	}
	if held != nil {
		t.Fatalf("a was not held after the refusal: %v", held)
	}
	if errors.Is(err, dblock.ErrLockLost) {
		t.Errorf("LockTx(b, NoWait) = %v: ErrLockLost, yet the transaction kept a and committed (the question was never sent)", err)
	}
}

// TestReview26RefusalInEndedTransactionBlamesServerSetting: a caller's
// transaction was rolled back by the server before the call (a deadlock
// victim whose 1213 the caller did not act on); database/sql still
// thinks it open, so the library's statements run in autocommit. A NoWait
// LockTx of a free key then fails with ErrNoTransaction ("the transaction
// had already ended on the server"). The same call for a key another
// process holds is refused with 1205, and the library's follow-up
// "SELECT @@in_transaction" answers 0, which it reads as "the server
// rolled the whole transaction back: its innodb_rollback_on_timeout is ON,
// though it was OFF when the Locker was created". The server's setting is
// OFF and unchanged: the diagnosis sends an operator after a configuration
// change that never happened, and the error is not ErrNoTransaction, so a
// caller that handles a dead transaction by that sentinel (as it does for
// the free key) treats it as a mere refusal and may retry in the dead
// transaction.
//
// Expected: ErrNoTransaction, as for the free key, and no claim that the
// server's innodb_rollback_on_timeout is ON (the library can read it with
// the same question).
//
// Fixed: the question reads the setting too; a transaction gone while
// the setting is OFF had ended before the read (ErrNoTransaction).
func TestReview26RefusalInEndedTransactionBlamesServerSetting(t *testing.T) {
	e, l := setupLocker(t)
	other := e.locker(t)
	defer other.Close()
	kv := e.kvTable(t)
	ctx := ctxT(t)
	held := dblock.Resource("r26:ended-held")
	holdKey(t, ctx, other, held)

	// The caller's transaction becomes a deadlock's victim (the partner
	// has written more, so the caller's is the lighter one).
	third, provoke, thirdDone := deadlockPartner(t, e, ctx, kv)
	tx := e.db.WithContext(ctx).Begin()
	defer tx.Rollback()
	if err := tx.Exec("UPDATE `" + kv + "` SET v = v + 1 WHERE k = 'r1'").Error; err != nil {
		t.Fatal(err)
	}
	go provoke("the caller's UPDATE to wait for r2")
	upd := tx.Exec("UPDATE `" + kv + "` SET v = v + 1 WHERE k = 'r2'").Error
	if err := <-thirdDone; err != nil {
		t.Fatalf("third transaction: %v", err)
	}
	if mysqlNumber(t, upd) != 1213 {
		t.Fatalf("caller's UPDATE = %v, want 1213 (the setting of the test)", upd)
	}
	third.Rollback()

	var rot int
	if err := e.db.Raw("SELECT @@innodb_rollback_on_timeout").Row().Scan(&rot); err != nil {
		t.Fatal(err)
	}
	free := l.LockTx(ctx, tx, dblock.Resource("r26:ended-free"), dblock.NoWait())
	t.Logf("in the ended transaction, LockTx(free key, NoWait): %v", free)
	if !errors.Is(free, dblock.ErrNoTransaction) {
		t.Fatalf("control: LockTx(free key) = %v, want ErrNoTransaction", free)
	}
	err := l.LockTx(ctx, tx, held, dblock.NoWait())
	t.Logf("in the ended transaction, LockTx(held key, NoWait): %v (the server's innodb_rollback_on_timeout: %d)", err, rot)
	if !errors.Is(err, dblock.ErrNoTransaction) {
		t.Errorf("LockTx(held key, NoWait) in a transaction that had already ended = %v, want ErrNoTransaction (as for a free key)", err)
	}
	if rot == 0 && err != nil && strings.Contains(err.Error(), "innodb_rollback_on_timeout is ON") {
		t.Errorf("the error blames innodb_rollback_on_timeout=ON; the server has it OFF")
	}
}
