package dblock_test

// Elections against the real server: campaign, resign, Leader, Observe,
// bad input, a cancelled campaign, a campaign outlasting several slices of
// its wait, a leader whose connection the server kills, and a dead
// leader's row left in the table.

import (
	"context"
	"encoding/hex"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

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

	name := electionLock(t, e, dblock.Resource("election:basic"))
	b := campaignAsync(ctx, el, "b")
	waitForNamedLockWaits(t, e.sqlDB, name, 1) // b waits for the named lock
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
	if rb.err == nil && namedLockHolder(t, e.sqlDB, name) == 0 {
		t.Fatal("b leads but nobody holds the named lock")
	}
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
	if id := namedLockHolder(t, e.sqlDB, name); id != 0 {
		t.Fatalf("connection %d holds the named lock after the last Resign returned", id)
	}
	assertFree(t, l, dblock.Resource("election:basic")) // a leadership never locks the key's row
}

func TestElectionBadInput(t *testing.T) {
	e, l := setupLocker(t)
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
			assertElectionFree(t, e, key)
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
	e, _, ctx, el := setupElection(t, "election:cancel")
	key := dblock.Resource("election:cancel")
	name := electionLock(t, e, key)
	a := mustCampaign(t, ctx, el, "a")
	holder := namedLockHolder(t, e.sqlDB, name)

	cctx, cancel := context.WithCancel(ctx)
	b := campaignAsync(cctx, el, "b")
	waitForNamedLockWaits(t, e.sqlDB, name, 1)
	cancel()
	r := <-b
	if !errors.Is(r.err, context.Canceled) {
		t.Fatalf("cancelled Campaign: %v, want context.Canceled", r.err)
	}
	waitForNamedLockWaits(t, e.sqlDB, name, 0) // the wait left the server
	if id := namedLockHolder(t, e.sqlDB, name); id != holder {
		t.Fatalf("the named lock is held by %d after the cancelled campaign, want the leader's %d", id, holder)
	}
	if err := a.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	// Nothing is left held, and nobody leads.
	assertElectionFree(t, e, key)
	wantLeader(t, ctx, el, "")
}

// TestElectionLeaderConnectionKilled: the server ends the leader's
// session (a crash as the server sees it): the named lock goes with it, a
// follower leads, and Done is closed.
//
// The leader learns of it at its next keepalive (a third of the lease,
// here 1 s): its fencing token guards what it does meanwhile.
func TestElectionLeaderConnectionKilled(t *testing.T) {
	e, _, ctx, el := setupElection(t, "election:killed", dblock.Defaults(dblock.Lease(3*time.Second)))
	name := electionLock(t, e, dblock.Resource("election:killed"))
	a := mustCampaign(t, ctx, el, "a")
	b := campaignAsync(ctx, el, "b")
	waitForNamedLockWaits(t, e.sqlDB, name, 1)

	id := namedLockHolder(t, e.sqlDB, name)
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

// rb resigns ld, for a defer.
func rb(ld *dblock.Leadership) { _ = ld.Resign(context.Background()) }

// TestElectionDeadLeaderRow: the row a leader wrote stays after it ends,
// and a row whose connection does not hold the named lock (a dead
// leader's, or one written by hand) is not taken for a leader.
func TestElectionDeadLeaderRow(t *testing.T) {
	e, _, ctx, el := setupElection(t, "election:stale")
	key := dblock.Resource("election:stale")
	ld := mustCampaign(t, ctx, el, "real")
	if n := rowsOf(t, e.db, schema.LeaderTable(e.table)); n != 1 {
		t.Fatalf("%d committed leader rows, want 1", n)
	}
	_ = ld.Resign(ctx)
	wantLeader(t, ctx, el, "")
	hash := lockkey.Fields(key).Hash()
	// A ghost naming a live connection that does not hold the lock (kept
	// out of the pool, so that no campaign gets it), with a token far
	// above the next leader's.
	other, err := e.sqlDB.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.ExecContext(ctx, "UPDATE `"+schema.LeaderTable(e.table)+"` SET value = 'ghost', token = token + 1000000, conn_id = CONNECTION_ID() WHERE key_hash = X'"+hex.EncodeToString(hash[:])+"'"); err != nil {
		t.Fatal(err)
	}
	wantLeader(t, ctx, el, "")
	octx, stop := context.WithCancel(ctx)
	obs := el.Observe(octx)

	// The next leader replaces the row (its session does not hold the
	// lock), whatever its token.
	ld2 := mustCampaign(t, ctx, el, "new")
	wantLeader(t, ctx, el, "new")
	if got := nextValue(t, obs); got != "new" {
		t.Fatalf("observed %q, want new (never the ghost)", got)
	}
	if _, tok, err := leaderSince(ctx, e.sqlDB, e.table, key); err != nil || tok != ld2.Token() {
		t.Fatalf("the row's token %d, %v; want the leader's %d", tok, err, ld2.Token())
	}
	wantLeader(t, ctx, el, "new")
	_ = ld2.Resign(ctx)
	ld3 := mustCampaign(t, ctx, el, "newer")
	wantLeader(t, ctx, el, "newer")
	if got := nextValue(t, obs); got != "newer" {
		t.Fatalf("observed %q, want newer", got)
	}
	_ = ld3.Resign(ctx)
	wantLeader(t, ctx, el, "")
	stop()
	for range obs {
	}
}

// TestElectionCampaignOutlastsSlices: a campaign waits for the named lock
// in slices of 2 s: it waits again after each and leads once the leader
// resigns.
func TestElectionCampaignOutlastsSlices(t *testing.T) {
	e, _, ctx, el := setupElection(t, "election:outlast")
	name := electionLock(t, e, dblock.Resource("election:outlast"))
	a := mustCampaign(t, ctx, el, "a")
	b := campaignAsync(ctx, el, "b")
	waitForNamedLockWaits(t, e.sqlDB, name, 1)
	// Two slices run out while a leads.
	const waited = 4500 * time.Millisecond
	select {
	case r := <-b:
		t.Fatalf("b's Campaign returned while a leads: %v", r.err)
	case <-time.After(waited):
	}
	waitForNamedLockWaits(t, e.sqlDB, name, 1) // still waiting
	if err := a.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-b
	if r.err != nil {
		t.Fatalf("b's Campaign: %v", r.err)
	}
	defer rb(r.ld)
	wantLeader(t, ctx, el, "b")
}

// TestElectionOutlivesCampaignContext: Campaign's context bounds the
// campaign only (as in etcd): cancelling it after the win leaves the
// leadership in place.
func TestElectionOutlivesCampaignContext(t *testing.T) {
	e, _, ctx, el := setupElection(t, "election:ctx")
	cctx, cancel := context.WithTimeout(ctx, opTimeout)
	ld, err := el.Campaign(cctx, "a")
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer rb(ld)
	if namedLockHolder(t, e.sqlDB, electionLock(t, e, dblock.Resource("election:ctx"))) == 0 {
		t.Fatal("the named lock is free after the campaign's context ended")
	}
	if isClosed(ld.Done()) {
		t.Fatalf("Done closed with the campaign's context: %v", ld.Err())
	}
	wantLeader(t, ctx, el, "a")
}

// TestElectionLeaderTableMissing: without migration 00002's leader table,
// Campaign and Leader say so (ErrTableMissing), and nothing stays held.
func TestElectionLeaderTableMissing(t *testing.T) {
	e, _, ctx, el := setupElection(t, "election:notable")
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
	assertElectionFree(t, e, dblock.Resource("election:notable"))
	if _, err := el.Leader(ctx); !errors.Is(err, dblock.ErrTableMissing) {
		t.Fatalf("Leader: %v, want ErrTableMissing", err)
	}
}

// TestElectionDroppedLeadership: a Leadership dropped without Resign is
// resigned once it is unreachable, as a dropped Lock is rolled back.
func TestElectionDroppedLeadership(t *testing.T) {
	e, _, ctx, el := setupElection(t, "election:dropped")
	name := electionLock(t, e, dblock.Resource("election:dropped"))
	func() {
		if _, err := el.Campaign(ctx, "a"); err != nil {
			t.Fatal(err)
		}
	}()
	waitFor(t, "the dropped leadership to be resigned", func() bool {
		runtime.GC()
		return namedLockHolder(t, e.sqlDB, name) == 0
	})
	wantLeader(t, ctx, el, "")
}
