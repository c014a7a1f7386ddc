package main

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/migrations"
)

// The hierarchy workload: lock only (acquire, release), each goroutine on
// its own key, by txlock on the run's lock table (the hierarchy off) and
// on a second table with the hierarchy on, beside the raw floor and the
// raw statements of the hierarchy, in the same repetitions.

// createModes creates what the semaphore and hierarchy workloads need:
// the hot key's semaphore (when semaphore), and the hierarchy's table
// with the hierarchy on, its global key's row first, then one row per own
// key (when e.hierTable is set).
func (e *env) createModes(ctx context.Context, semaphore bool) error {
	if !semaphore && e.hierTable == "" {
		return nil
	}
	gdb, sqlDB, err := openGorm(e.ip, 2)
	if err != nil {
		return err
	}
	defer sqlDB.Close()
	if semaphore {
		l, err := dblock.New(gdb, dblock.Table(e.lockTable))
		if err != nil {
			return err
		}
		defer l.Close()
		if err := e.createSemaphore(ctx, l); err != nil {
			return err
		}
	}
	if e.hierTable == "" {
		return nil
	}
	if _, err := migrations.Up(ctx, e.admin, migrations.Table(e.hierTable)); err != nil {
		return fmt.Errorf("creating the hierarchy's lock table: %w", err)
	}
	if err := migrations.SetHierarchy(ctx, e.admin, true, migrations.Table(e.hierTable)); err != nil {
		return fmt.Errorf("switching the hierarchy on: %w", err)
	}
	l, err := dblock.New(gdb, dblock.Table(e.hierTable))
	if err != nil {
		return err
	}
	defer l.Close()
	rowID := func(k dblock.Key) (int64, error) {
		if err := l.Do(ctx, k, func(context.Context, *gorm.DB) error { return nil }); err != nil {
			return 0, fmt.Errorf("creating the hierarchy's key rows: %w", err)
		}
		var id int64
		err := e.admin.QueryRowContext(ctx, "SELECT id FROM `"+e.hierTable+"` WHERE resource = ? AND is_global = ?", k.Resource, k.Global).Scan(&id)
		return id, err
	}
	if e.hierGlobal, err = rowID(dblock.Global()); err != nil {
		return err
	}
	for i := range e.own {
		if e.own[i].hierID, err = rowID(e.own[i].key); err != nil {
			return err
		}
	}
	return nil
}

// startRawHier is the raw floor with the statements of the hierarchy:
// BEGIN; SELECT id ... WHERE id = <global> LOCK IN SHARE MODE; SELECT id
// ... WHERE id = <key> FOR UPDATE; COMMIT, on the hierarchy's table (the
// global key's row sorts first, as txlock takes them).
func startRawHier(ctx context.Context, e *env, c cell) ([]cycleFunc, func(), error) {
	_, conns, release, err := pinned(ctx, e.ip, c.g)
	if err != nil {
		return nil, nil, err
	}
	containerSQL := "SELECT id FROM `" + e.hierTable + "` WHERE id = ? " + inShareMode
	keySQL := "SELECT id FROM `" + e.hierTable + "` WHERE id = ? " + forUpdate
	fns := make([]cycleFunc, c.g)
	for i := range fns {
		conn, k := conns[i], e.key(c, i)
		lock := func(ctx context.Context, tx *sql.Tx) error {
			var id int64
			if err := tx.QueryRowContext(ctx, containerSQL, e.hierGlobal).Scan(&id); err != nil {
				return err
			}
			return tx.QueryRowContext(ctx, keySQL, k.hierID).Scan(&id)
		}
		fns[i] = func(ctx, _ context.Context) (time.Duration, error) { return rawCycle(ctx, conn, lock, nil) }
	}
	return fns, release, nil
}

// hierCell is the cell of the hierarchy workload with g goroutines.
func hierCell(g int) cell { return cell{work: hierLock, g: g} }

// hierPairs are the implementations of the hierarchy workload, each with
// the hierarchy on and off; the first is the raw floor.
var hierPairs = []modePair{
	{"raw-hier", "raw", "raw row lock"},
	{"do-hier", "do", "txlock Do"},
}

// hierarchyTables prints the hierarchy workload: each contender against
// the raw floor, the hierarchy on over off in the same repetition, and
// the CPU per cycle.
func (rec *recorder) hierarchyTables(b *strings.Builder, cs []*contender) {
	gs := rec.o.hierGoroutines
	fmt.Fprintf(b, "### %s\n\ncycles/s (x raw floor: BEGIN; SELECT ... FOR UPDATE; COMMIT, in the same repetition)\n\n| contender | hierarchy |", hierLock.title())
	countColumns(b, 2, gs)
	for _, p := range hierPairs {
		for _, m := range []struct{ id, mode string }{{p.exclusive, "off"}, {p.shared, "on"}} {
			if !rec.ran(cs, m.id) {
				continue
			}
			fmt.Fprintf(b, "| %s | %s |", p.label, m.mode)
			for _, g := range gs {
				if s, ok := rec.summary(hierCell(g), m.id); ok {
					fmt.Fprintf(b, " %s (%.2fx)%s |", thousands(s.thr), s.ratio, errMark(s.errors))
				} else {
					b.WriteString(" – |")
				}
			}
			b.WriteString("\n")
		}
	}
	b.WriteString("\nthe hierarchy on over off, in the same repetition (median)\n\n")
	rec.pairTable(b, cs, hierPairs, gs, hierCell)
	b.WriteString("\n")
	rec.cpuTable(b, cs, hierLock, gs)
}

// hierarchyTargets are the hierarchy workload's figures for the targets
// table (reported, no goal).
func (rec *recorder) hierarchyTargets(add func(name string, c cell, a, b string)) {
	for _, g := range rec.o.hierGoroutines {
		c := hierCell(g)
		add(fmt.Sprintf("hierarchy, Do on / Do off, %d own", g), c, "do-hier", "do")
		add(fmt.Sprintf("hierarchy, Do on / raw floor, %d own", g), c, "do-hier", "raw")
		add(fmt.Sprintf("hierarchy, raw with the hierarchy's statements / raw floor, %d own", g), c, "raw-hier", "raw")
	}
}
