package dblock_test

// Elections against the real server: campaign, resign, Leader, Observe,
// bad input, a cancelled campaign, a campaign outlasting the server's lock
// wait, a leader whose connection the server kills, and a committed leader
// row (a defect).

import (
	"context"
	"encoding/hex"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/lockkey"
	"github.com/txlock/txlock/schema"
)

// campaignResult is what a goroutine running Campaign reports.
type campaignResult struct {
	ld  *dblock.Leadership
	err error
	at  time.Time
}

// campaignAsync runs Campaign in a goroutine.
func campaignAsync(ctx context.Context, e *dblock.Election, value string) <-chan campaignResult {
	ch := make(chan campaignResult, 1)
	go func() {
		ld, err := e.Campaign(ctx, value)
		ch <- campaignResult{ld, err, time.Now()}
	}()
	return ch
}

// mustCampaign campaigns and fails the test on an error; the leadership is
// resigned when the test ends.
func mustCampaign(t *testing.T, ctx context.Context, e *dblock.Election, value string) *dblock.Leadership {
	t.Helper()
	ld, err := e.Campaign(ctx, value)
	if err != nil {
		t.Fatalf("Campaign(%q): %v", value, err)
	}
	t.Cleanup(func() { _ = ld.Resign(context.Background()) })
	return ld
}

// wantLeader fails the test unless Leader answers want ("" : ErrNoLeader).
func wantLeader(t *testing.T, ctx context.Context, e *dblock.Election, want string) {
	t.Helper()
	got, err := e.Leader(ctx)
	switch {
	case want == "" && !errors.Is(err, dblock.ErrNoLeader):
		t.Fatalf("Leader = %q, %v; want ErrNoLeader", got, err)
	case want != "" && (err != nil || got != want):
		t.Fatalf("Leader = %q, %v; want %q", got, err, want)
	}
}

// nextValue receives from an Observe channel, failing the test after
// opTimeout or when the channel is closed.
func nextValue(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case v, ok := <-ch:
		if !ok {
			t.Fatal("the Observe channel was closed")
		}
		return v
	case <-time.After(opTimeout):
		t.Fatalf("no leader observed within %v", opTimeout)
	}
	return ""
}

func TestElectionCampaignResign(t *testing.T) {
	e, l, ctx, el := setupElection(t, "election:basic")
	wantLeader(t, ctx, el, "")

	obsCtx, stopObs := context.WithCancel(ctx)
	obs := el.Observe(obsCtx)

	a := mustCampaign(t, ctx, el, "a")
	if a.Token() <= 0 {
		t.Fatalf("token %d, want > 0", a.Token())
	}
	wantLeader(t, ctx, el, "a")
	if got := nextValue(t, obs); got != "a" {
		t.Fatalf("observed %q, want a", got)
	}

	b := campaignAsync(ctx, el, "b")
	waitForLockWaits(t, e.sqlDB, e.table, 1) // b waits for the key
	select {
	case r := <-b:
		t.Fatalf("b won while a leads: %v", r.err)
	default:
	}
	if isClosed(a.Done()) {
		t.Fatal("a's Done closed while it leads")
	}
	if err := a.Resign(ctx); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	if !isClosed(a.Done()) || a.Err() != nil {
		t.Fatalf("after Resign: Done closed %v, Err %v; want closed, nil", isClosed(a.Done()), a.Err())
	}
	rb := <-b
	if rb.err != nil {
		t.Fatalf("b's Campaign: %v", rb.err)
	}
	t.Cleanup(func() { _ = rb.ld.Resign(context.Background()) })
	if rb.ld.Token() <= a.Token() {
		t.Fatalf("b's token %d not above a's %d", rb.ld.Token(), a.Token())
	}
	wantLeader(t, ctx, el, "b")
	if got := nextValue(t, obs); got != "b" {
		t.Fatalf("observed %q, want b", got)
	}
	if err := rb.ld.Resign(ctx); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	if err := rb.ld.Resign(ctx); err != nil {
		t.Fatalf("a second Resign: %v, want nil", err)
	}
	wantLeader(t, ctx, el, "")
	stopObs()
	for v := range obs {
		t.Fatalf("observed %q after the last leader resigned", v)
	}
	assertFree(t, l, dblock.Resource("election:basic"))
}

func TestElectionBadInput(t *testing.T) {
	_, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("election:bad")
	el := l.Election(key)
	for _, c := range []struct {
		name, value, want string
	}{
		{"too long", strings.Repeat("x", 1025), "at most 1024"},
		{"not UTF-8", "a\xffb", "not valid UTF-8"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ld, err := el.Campaign(ctx, c.value)
			if err == nil {
				_ = ld.Resign(ctx)
				t.Fatal("Campaign succeeded")
			}
			mustContain(t, err, c.want)
			assertFree(t, l, key)
		})
	}
	// 1024 characters of 4 bytes each fit the column.
	long := strings.Repeat("😀", 1024)
	ld := mustCampaign(t, ctx, el, long)
	wantLeader(t, ctx, el, long)
	_ = ld.Resign(ctx)

	var nilLocker *dblock.Locker
	if _, err := nilLocker.Election(key).Campaign(ctx, "x"); err == nil {
		t.Error("Campaign on a nil Locker succeeded")
	}
	if _, err := l.Election(dblock.Key{}).Leader(ctx); !errors.Is(err, dblock.ErrInvalidKey) {
		t.Errorf("Leader of an empty key: %v, want ErrInvalidKey", err)
	}
	var nilCtx context.Context
	if _, err := el.Campaign(nilCtx, "x"); err == nil {
		t.Error("Campaign with a nil context succeeded")
	}
	if _, err := el.Leader(nilCtx); err == nil {
		t.Error("Leader with a nil context succeeded")
	}
	if ch := l.Election(dblock.Key{}).Observe(ctx); ch != nil {
		if _, ok := <-ch; ok {
			t.Error("Observe of an invalid key delivered a value")
		}
	}
	var nilLd *dblock.Leadership
	if nilLd.Resign(ctx) == nil || nilLd.Token() != 0 || !isClosed(nilLd.Done()) {
		t.Error("a nil Leadership: Resign must fail, Token be 0, Done be closed")
	}
}

func TestElectionCancelledCampaign(t *testing.T) {
	e, l, ctx, el := setupElection(t, "election:cancel")
	key := dblock.Resource("election:cancel")
	a := mustCampaign(t, ctx, el, "a")

	cctx, cancel := context.WithCancel(ctx)
	b := campaignAsync(cctx, el, "b")
	waitForLockWaits(t, e.sqlDB, e.table, 1)
	cancel()
	r := <-b
	if !errors.Is(r.err, context.Canceled) {
		t.Fatalf("cancelled Campaign: %v, want context.Canceled", r.err)
	}
	waitForLockWaits(t, e.sqlDB, e.table, 0) // the wait left the server's queue
	if err := a.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	// Nothing is left held, and nobody leads.
	assertFree(t, l, key)
	wantLeader(t, ctx, el, "")
}

// TestElectionLeaderConnectionKilled: the server ends the leader's
// session (a crash as the server sees it): the row goes with the
// transaction, Done is closed, a follower leads.
//
// The leader learns of it at its next keepalive (a third of the lease,
// here 1 s): its fencing token guards what it does meanwhile.
func TestElectionLeaderConnectionKilled(t *testing.T) {
	e, _, ctx, el := setupElection(t, "election:killed", dblock.Defaults(dblock.Lease(3*time.Second)))
	a := mustCampaign(t, ctx, el, "a")
	b := campaignAsync(ctx, el, "b")
	waitForLockWaits(t, e.sqlDB, e.table, 1)

	id := blockerOf(t, e, e.table)
	killed := time.Now()
	killConnection(t, e.db, id)
	r := <-b
	if r.err != nil {
		t.Fatalf("b's Campaign: %v", r.err)
	}
	defer rb(r.ld)
	t.Logf("kill of the leader's connection to the follower's leadership: %v", r.at.Sub(killed).Round(10*time.Microsecond))
	doneAt, ok := closedWithin(a.Done(), opTimeout)
	if !ok {
		t.Fatal("a's Done not closed after its connection was killed")
	}
	t.Logf("kill to the old leader's Done: %v (its next keepalive)", doneAt.Sub(killed).Round(time.Millisecond))
	if !errors.Is(a.Err(), dblock.ErrLockLost) {
		t.Fatalf("a's Err = %v, want ErrLockLost", a.Err())
	}
	wantLeader(t, ctx, el, "b")
}

// setupElection is setupLocker with the election of Resource(name).
func setupElection(t *testing.T, name string, opts ...dblock.Option) (env, *dblock.Locker, context.Context, *dblock.Election) {
	t.Helper()
	e, l := setupLocker(t, opts...)
	return e, l, ctxT(t), l.Election(dblock.Resource(name))
}

// blockerOf returns the connection id of the transaction that blocks the
// one waiting with a statement on table (the shared server runs other
// tests' transactions: only this test's waiter names its table).
func blockerOf(t *testing.T, e env, table string) int64 {
	t.Helper()
	var id int64
	waitFor(t, "the waiter's blocker in INNODB_LOCK_WAITS", func() bool {
		err := e.db.Raw(`SELECT b.trx_mysql_thread_id FROM information_schema.INNODB_LOCK_WAITS w
			JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id
			JOIN information_schema.INNODB_TRX r ON r.trx_id = w.requesting_trx_id
			WHERE r.trx_query LIKE ?`, "%"+table+"%").Row().Scan(&id)
		return err == nil
	})
	return id
}

// rb resigns ld, for a defer.
func rb(ld *dblock.Leadership) { _ = ld.Resign(context.Background()) }

// TestElectionCommittedRow: a committed leader row (which txlock never
// writes) is not taken for a leader, and the next campaign removes it.
func TestElectionCommittedRow(t *testing.T) {
	e, _, ctx, el := setupElection(t, "election:stale")
	key := dblock.Resource("election:stale")
	ld := mustCampaign(t, ctx, el, "real")
	if n := rowsOf(t, e.db, schema.LeaderTable(e.table)); n != 0 {
		t.Fatalf("a plain read sees %d leader rows: the leader's row must stay uncommitted", n)
	}
	_ = ld.Resign(ctx)
	hash := lockkey.Fields(key).Hash()
	if err := e.db.Exec("INSERT INTO `" + schema.LeaderTable(e.table) + "` (key_hash, value, token) VALUES (X'" + hex.EncodeToString(hash[:]) + "', 'ghost', 1)").Error; err != nil {
		t.Fatal(err)
	}
	wantLeader(t, ctx, el, "")
	octx, stop := context.WithCancel(ctx)
	obs := el.Observe(octx)

	ld2 := mustCampaign(t, ctx, el, "new")
	wantLeader(t, ctx, el, "new")
	if got := nextValue(t, obs); got != "new" {
		t.Fatalf("observed %q, want new (never the committed ghost)", got)
	}
	_ = ld2.Resign(ctx)
	wantLeader(t, ctx, el, "")
	if n := rowsOf(t, e.db, schema.LeaderTable(e.table)); n != 0 {
		t.Fatalf("%d rows in the leader table after the last resign, want 0 (the ghost repaired)", n)
	}
	stop()
	for range obs {
	}
}

// TestElectionCampaignOutlastsLockWait: a campaign waits past the server's
// innodb_lock_wait_timeout (1 s on this pool's sessions): it queues again
// and leads once the leader resigns.
func TestElectionCampaignOutlastsLockWait(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	short := faultOpen(t, dsnWith(t, func(c *gomysql.Config) {
		if c.Params == nil {
			c.Params = map[string]string{}
		}
		c.Params["innodb_lock_wait_timeout"] = "1"
	}))
	ls := faultLocker(t, short, e.table)
	key := dblock.Resource("election:outlast")
	a := mustCampaign(t, ctx, l.Election(key), "a")
	b := campaignAsync(ctx, ls.Election(key), "b")
	// Three server waits of 1 s run out while a leads.
	const waited = 3 * time.Second
	select {
	case r := <-b:
		t.Fatalf("b's Campaign returned while a leads: %v", r.err)
	case <-time.After(waited):
	}
	if err := a.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-b
	if r.err != nil {
		t.Fatalf("b's Campaign: %v", r.err)
	}
	defer rb(r.ld)
	wantLeader(t, ctx, l.Election(key), "b")
}

// TestElectionOutlivesCampaignContext: Campaign's context bounds the
// campaign only (as in etcd): cancelling it after the win leaves the
// leadership in place.
func TestElectionOutlivesCampaignContext(t *testing.T) {
	_, l, ctx, el := setupElection(t, "election:ctx")
	cctx, cancel := context.WithTimeout(ctx, opTimeout)
	ld, err := el.Campaign(cctx, "a")
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer rb(ld)
	if err := heldByOther(l, dblock.Resource("election:ctx")); err != nil {
		t.Fatalf("after the campaign's context ended: %v", err)
	}
	if isClosed(ld.Done()) {
		t.Fatalf("Done closed with the campaign's context: %v", ld.Err())
	}
	wantLeader(t, ctx, el, "a")
}

// TestElectionLeaderTableMissing: without migration 00002's leader table,
// Campaign and Leader say so (ErrTableMissing), and nothing stays held.
func TestElectionLeaderTableMissing(t *testing.T) {
	e, l, ctx, el := setupElection(t, "election:notable")
	if err := e.db.Exec("DROP TABLE `" + schema.LeaderTable(e.table) + "`").Error; err != nil {
		t.Fatal(err)
	}
	ld, err := el.Campaign(ctx, "a")
	if !errors.Is(err, dblock.ErrTableMissing) {
		if ld != nil {
			rb(ld)
		}
		t.Fatalf("Campaign: %v, want ErrTableMissing", err)
	}
	mustContain(t, err, schema.LeaderTable(e.table), "00002")
	assertFree(t, l, dblock.Resource("election:notable"))
	if _, err := el.Leader(ctx); !errors.Is(err, dblock.ErrTableMissing) {
		t.Fatalf("Leader: %v, want ErrTableMissing", err)
	}
}

// TestElectionDroppedLeadership: a Leadership dropped without Resign is
// resigned once it is unreachable, as a dropped Lock is rolled back.
func TestElectionDroppedLeadership(t *testing.T) {
	_, l, ctx, el := setupElection(t, "election:dropped")
	func() {
		if _, err := el.Campaign(ctx, "a"); err != nil {
			t.Fatal(err)
		}
	}()
	waitFor(t, "the dropped leadership to be resigned", func() bool {
		runtime.GC()
		return freeForOther(l, dblock.Resource("election:dropped")) == nil
	})
	wantLeader(t, ctx, el, "")
}
