package dblock_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// openReadOnly opens n transactions on other connections that have read
// (so that InnoDB lists them) and written nothing, and leaves them open
// and idle until the test ends; it returns their connection ids. MariaDB's
// lock views give every such transaction the id 0, as they give a
// transaction that holds only shared locks.
func openReadOnly(t *testing.T, db *gorm.DB, table string, n int) []int64 {
	t.Helper()
	var conns []int64
	for range n {
		tx := db.Begin()
		t.Cleanup(func() { tx.Rollback() })
		var rows int
		if err := tx.Raw("SELECT COUNT(*) FROM `" + table + "`").Row().Scan(&rows); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, connectionID(t, tx))
	}
	return conns
}

// TestHoldersSharedUnnamed: a key held shared by transactions that have
// written nothing, beside read-only transactions that hold nothing (all of
// which MariaDB's lock views give the id 0): Holder names none of them
// (it named one of the read-only transactions before), and Holders lists
// the key once, shared, with no connection named; an exclusive key beside
// it is named, not shared.
func TestHoldersSharedUnnamed(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	shared, excl := dblock.Resource("shared:unnamed"), dblock.Resource("shared:excl")
	others := openReadOnly(t, e.db, e.table, 2)
	for range 2 {
		r, err := l.Lock(ctx, shared, dblock.Shared())
		if err != nil {
			t.Fatal(err)
		}
		defer r.Rollback()
	}
	x := holdKey(t, ctx, l, excl)
	xconn := connectionID(t, x.Tx())
	others = append(others, openReadOnly(t, e.db, e.table, 2)...)

	_, err := l.Holder(ctx, shared)
	t.Logf("Holder: %v", err)
	if !errors.Is(err, dblock.ErrHolderUnknown) || !strings.Contains(err.Error(), "held shared") {
		t.Errorf("Holder of a key held shared by read-only transactions = %v, want ErrHolderUnknown saying it is held shared", err)
	}
	hs, err := l.Holders(ctx, dblock.Key{Resource: "shared:*"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Holders beside read-only transactions %v: %+v", others, hs)
	if len(hs) != 2 {
		t.Fatalf("Holders = %+v, want the two held keys", hs)
	}
	for _, h := range hs {
		switch h.Key {
		case shared:
			if !h.Shared || h.ConnID != 0 || len(h.SharedWith) != 0 {
				t.Errorf("the key held shared: %+v, want Shared and no connection named", h)
			}
		case excl:
			if h.Shared || h.ConnID != xconn || len(h.SharedWith) != 0 {
				t.Errorf("the exclusive key: %+v, want connection %d, not shared", h, xconn)
			}
		default:
			t.Errorf("unexpected key %s", h.Key)
		}
	}
}

// TestHolderSharedNamed: a key held shared by two transactions that have
// written something (MariaDB names those): Holder reports one as its
// Session and the other in SharedWith, with the exclusive request queued
// behind them as a waiter; Holders lists the key once, the same way.
func TestHolderSharedNamed(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	key := dblock.Resource("shared:named")
	biz := e.table + "_biz"
	if err := e.db.Exec("CREATE TABLE `" + biz + "` (id INT PRIMARY KEY) ENGINE=InnoDB").Error; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.db.Exec("DROP TABLE IF EXISTS `" + biz + "`") })
	openReadOnly(t, e.db, e.table, 2)
	var conns []int64
	var txs []*gorm.DB
	for i := range 2 {
		tx := e.db.WithContext(ctx).Begin()
		t.Cleanup(func() { tx.Rollback() })
		txs = append(txs, tx)
		if err := tx.Exec("INSERT INTO `"+biz+"` VALUES (?)", i).Error; err != nil {
			t.Fatal(err)
		}
		if err := l.LockTx(ctx, tx, key, dblock.Shared()); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, connectionID(t, tx))
	}
	openReadOnly(t, e.db, e.table, 2)
	granted := lockLater(t, ctx, l, key)
	waitingStatement(t, e.db, e.table, "FOR UPDATE")

	named := func(what string, h dblock.Holder) {
		t.Helper()
		got := []int64{h.ConnID}
		for _, s := range h.SharedWith {
			got = append(got, s.ConnID)
		}
		slices.Sort(got)
		t.Logf("%s: holder %d, shared with %+v, waiters %+v", what, h.ConnID, h.SharedWith, h.Waiters)
		if !h.Shared || fmt.Sprint(got) != fmt.Sprint(conns) || h.User == "" {
			t.Errorf("%s: Shared %v, holders %v, want shared by %v", what, h.Shared, got, conns)
		}
		if len(h.Waiters) != 1 || slices.Contains(conns, h.Waiters[0].ConnID) {
			t.Errorf("%s: waiters %+v, want the exclusive request", what, h.Waiters)
		}
	}
	h, err := l.Holder(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	named("Holder", h)
	hs, err := l.Holders(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(hs) != 1 {
		t.Fatalf("Holders = %+v, want the key once", hs)
	}
	named("Holders", hs[0])
	for _, tx := range txs {
		if err := tx.Rollback().Error; err != nil {
			t.Fatal(err)
		}
	}
	w := <-granted
	if w == nil {
		t.FailNow()
	}
	wconn := connectionID(t, w.Tx())
	h, err = l.Holder(ctx, key)
	if err != nil || h.Shared || h.ConnID != wconn || len(h.SharedWith) != 0 {
		t.Errorf("Holder once the exclusive waiter has the key: %+v, %v, want connection %d, not shared", h, err, wconn)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
}
