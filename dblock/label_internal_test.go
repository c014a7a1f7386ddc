package dblock

import (
	"context"
	"slices"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/internal/testdb"
	"github.com/txlock/txlock/schema"
)

// TestSessionPrune: when a prune is due, a label write deletes the rows of
// a past server run and of connections gone (the test's user sees every
// connection), older than pruneGrace, and keeps the rows of live
// connections and recent ones.
func TestSessionPrune(t *testing.T) {
	db := testdb.Open(t)
	table := testdb.Table(t, db)
	testdb.NoLeaks(t, db)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	live := testdb.Open(t) // a connection that stays, labelled long ago
	var liveID int64
	if err := live.Raw("SELECT CONNECTION_ID()").Row().Scan(&liveID); err != nil {
		t.Fatal(err)
	}
	st := schema.SessionTable(table)
	const pastRun, gone, recent = 4_000_000_001, 4_000_000_002, 4_000_000_003
	for _, r := range []struct {
		id   int64
		seen string
	}{
		{pastRun, "UTC_TIMESTAMP(6) - INTERVAL (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'Uptime') + 120 SECOND"},
		{gone, "UTC_TIMESTAMP(6) - INTERVAL 2 MINUTE"},
		{recent, "UTC_TIMESTAMP(6)"},
		{liveID, "UTC_TIMESTAMP(6) - INTERVAL 2 MINUTE"},
	} {
		if err := db.Exec("INSERT INTO `"+st+"` (conn_id, label, seen) VALUES (?, 'old', "+r.seen+")", r.id).Error; err != nil {
			t.Fatal(err)
		}
	}
	l, err := New(db, Table(table), Label("pruner"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Do(ctx, Resource("x"), func(context.Context, *gorm.DB) error { return nil }); err != nil {
		t.Fatal(err)
	}
	l.flushLabels(ctx)
	ids := func() []int64 {
		var out []int64
		if err := db.Raw("SELECT conn_id FROM `" + st + "` ORDER BY conn_id").Scan(&out).Error; err != nil {
			t.Fatal(err)
		}
		return out
	}
	before := ids()
	if !slices.Contains(before, gone) || !slices.Contains(before, pastRun) {
		t.Fatalf("rows %v: pruned before it was due (pruneEvery after New)", before)
	}
	l.sessions.pruned.Store(0) // due now
	l.leased.clear()           // the next Do meets its connection as new: a label write
	l.sessions.ids.clear()     // not written yet
	if err := l.Do(ctx, Resource("x"), func(context.Context, *gorm.DB) error { return nil }); err != nil {
		t.Fatal(err)
	}
	l.flushLabels(ctx) // the write, and the prune after it, are the writer's
	after := ids()
	t.Logf("session rows before the prune %v, after %v", before, after)
	if slices.Contains(after, gone) || slices.Contains(after, pastRun) {
		t.Errorf("rows %v: the rows of a gone connection and of a past run are still there", after)
	}
	if !slices.Contains(after, liveID) || !slices.Contains(after, recent) {
		t.Errorf("rows %v: the rows of a live connection (%d) and a recent one were deleted", after, liveID)
	}
}
