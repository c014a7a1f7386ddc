package main

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/lockkey"
	"github.com/txlock/txlock/internal/sessions"
)

// keySemaphore is what release knows of a key's semaphore.
type keySemaphore struct {
	n     int           // the key's permits (slot 0's); 0: the key has no semaphore
	slots map[int64]int // its permit rows' slots, by row id
	held  []int64       // its permit rows held by some transaction, by id
	// entries is MySQL's data_locks, read to find held (nil on MariaDB).
	entries []lockEntry
}

// semaphoreOf reads key's permit rows and which of them are held: on
// MariaDB by locking the free ones with SKIP LOCKED in a transaction
// rolled back at once (the probe of "txlock locks"), on MySQL from
// data_locks. A key without permit rows, or a schema without the permit
// table, has none (n 0).
func (in *inspector) semaphoreOf(ctx context.Context, key dblock.Key) (keySemaphore, error) {
	h := lockkey.Fields(key).Hash()
	sem := keySemaphore{slots: map[int64]int{}}
	var ids []int64
	err := scanRows(ctx, in.db, "SELECT id, slot, permits FROM `"+in.permitTable()+"` WHERE key_hash = ? ORDER BY slot", []any{h[:]}, func(rows *sql.Rows) error {
		var id int64
		var slot, n int
		if err := rows.Scan(&id, &slot, &n); err != nil {
			return err
		}
		if slot == 0 {
			sem.n = n
		}
		sem.slots[id] = slot
		ids = append(ids, id)
		return nil
	})
	switch {
	case sessions.Missing(err):
		return keySemaphore{}, nil
	case err != nil:
		return sem, fmt.Errorf("reading the permits of %s in %s: %w", key, in.permitTable(), err)
	case len(ids) == 0:
		return sem, nil
	}
	if !in.srv.MariaDB {
		if sem.entries, err = in.entries(ctx); err != nil {
			return sem, err
		}
		for _, e := range sem.entries {
			if _, ok := sem.slots[e.rowID]; ok && e.permit && !e.waiting && !slices.Contains(sem.held, e.rowID) {
				sem.held = append(sem.held, e.rowID)
			}
		}
		slices.Sort(sem.held)
		return sem, nil
	}
	free, err := in.lockFree(ctx, in.permitTable(), ids)
	if err != nil {
		return sem, err
	}
	for _, id := range ids {
		if !free[id] {
			sem.held = append(sem.held, id)
		}
	}
	return sem, nil
}

// permitHolders names the holders of sem's held permits, until stop (if
// set) returns true for one: on MySQL from data_locks, on MariaDB by
// queueing a probe behind each (identifyHolder). unnamed counts the held
// permits whose holder was not named; a permit released meanwhile is
// neither.
func (in *inspector) permitHolders(ctx context.Context, sem keySemaphore, stop func(holding) bool) (list []holding, unnamed int, err error) {
	for _, id := range sem.held {
		var found []holding
		if !in.srv.MariaDB {
			for _, e := range sem.entries {
				if e.rowID == id && e.permit && !e.waiting {
					found = append(found, holding{conn: e.conn, trx: e.trx, row: id, permit: true})
				}
			}
		} else {
			h, err := in.identifyHolder(ctx, in.permitTable(), id, identifyWait)
			if err != nil {
				return nil, 0, err
			}
			if h.notHeld || h.rowGone {
				continue
			}
			for _, b := range h.holders {
				found = append(found, holding{conn: b.conn, trx: b.trx, row: id, permit: true, base: b.base})
			}
		}
		if len(found) == 0 {
			unnamed++
		}
		for _, h := range found {
			list = append(list, h)
			if stop != nil && stop(h) {
				return list, unnamed, nil
			}
		}
	}
	return list, unnamed, nil
}

// refuseSemaphore returns release's refusal of key when permits of its
// semaphore are held (nobody holding the key's lock), after printing their
// holders; nil when none is.
func (r *releaser) refuseSemaphore(ctx context.Context, key dblock.Key) error {
	in := r.in
	sem, err := in.semaphoreOf(ctx, key)
	if err != nil || len(sem.held) == 0 {
		return err
	}
	list, unnamed, err := in.permitHolders(ctx, sem, nil)
	if err != nil {
		return err
	}
	fmt.Fprintf(r.out, "%s: nobody holds the lock of %s, but %d of the %d permits of its semaphore (dblock.Permits) are held:\n", in.table, key, len(sem.held), sem.n)
	conns := make([]string, 0, len(list))
	for _, h := range list {
		who, err := in.describe(ctx, h.conn, h.trx)
		if err != nil {
			return err
		}
		fmt.Fprintf(r.out, "  %s, permit slot %d\n", who, sem.slots[h.row])
		conns = append(conns, strconv.FormatInt(h.conn, 10))
	}
	if unnamed > 0 {
		fmt.Fprintf(r.out, "  %d holder(s) not named (released meanwhile, or the INNODB_* cache was not refreshed in time)\n", unnamed)
	}
	return fmt.Errorf("%s: %s is a semaphore whose holders run side by side: release does not kill them all; nothing killed. "+
		"End the stuck one with txlock release --key '%s' --permit-holder CONN (holders: %s)",
		in.table, key, keySpec(key), orNone(conns))
}

// permitTarget is the permit of key's semaphore that connection conn
// holds, as release's target.
func (r *releaser) permitTarget(key dblock.Key, conn int64) target {
	in := r.in
	name := "a permit of " + key.String()
	return target{name: name, find: func(ctx context.Context, naming int) (holders, error) {
		sem, err := in.semaphoreOf(ctx, key)
		if err != nil {
			return holders{}, err
		}
		if sem.n == 0 {
			return holders{}, fmt.Errorf("%s: %s has no semaphore (no permit rows in %s): --permit-holder ends the holder of a permit of a key taken with dblock.Permits; drop it to release the key's lock",
				in.table, key, in.permitTable())
		}
		none := holders{where: fmt.Sprintf("none of its %d permits is held", sem.n)}
		if len(sem.held) == 0 {
			return none, nil
		}
		list, unnamed, err := in.permitHolders(ctx, sem, func(h holding) bool { return h.conn == conn })
		if err != nil {
			return holders{}, err
		}
		i := slices.IndexFunc(list, func(h holding) bool { return h.conn == conn })
		switch {
		case i < 0 && naming > 1:
			return none, nil // it held one when first named: released since
		case i < 0:
			conns := make([]string, 0, len(list))
			for _, h := range list {
				conns = append(conns, strconv.FormatInt(h.conn, 10))
			}
			also := ""
			if unnamed > 0 {
				also = fmt.Sprintf(", and %d not named", unnamed)
			}
			return holders{}, fmt.Errorf("%s: connection %d holds no permit of %s: %d of its %d permits are held, by connection(s) %s%s; nothing killed",
				in.table, conn, key, len(sem.held), sem.n, orNone(conns), also)
		}
		h := list[i]
		via := "a probe queued behind it (INNODB_LOCK_WAITS)"
		if !in.srv.MariaDB {
			via = "performance_schema.data_locks"
		}
		return holders{list: []holding{h}, via: via,
			where: fmt.Sprintf("slot %d of %d, row %d of %s", sem.slots[h.row], sem.n, h.row, in.permitTable()),
			row:   fmt.Sprintf("row %d of %s", h.row, in.permitTable())}, nil
	}}
}

// keySpec renders key as --key takes it: "resource=order:42,user=u-7".
func keySpec(k dblock.Key) string {
	var parts []string
	for _, f := range []struct{ name, v string }{{"resource", k.Resource}, {"operation", k.Operation}, {"method", k.Method}, {"user", k.User}} {
		if f.v != "" {
			parts = append(parts, f.name+"="+f.v)
		}
	}
	if k.Global {
		parts = append(parts, "global")
	}
	return strings.Join(parts, ",")
}

// orNone returns the list joined, or "none named".
func orNone(list []string) string {
	if len(list) == 0 {
		return "none named"
	}
	return strings.Join(list, ", ")
}
