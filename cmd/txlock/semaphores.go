package main

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/txlock/txlock/dblock"
)

// Semaphores (dblock.Permits): a key's n permits are n rows of the permit
// table, slots 0 to n-1 (slot 0's permits column is the key's n), and a
// holder locks one of them FOR UPDATE in its transaction. Their holders
// and waiters are found as a key row's are (the lock views, the SKIP
// LOCKED probe, --identify), on the permit rows; a permit row names its
// key by key_hash, which the key's row of the lock table (created by the
// library before the permits) resolves to the key's fields.

// semMode is the MODE of a semaphore's holders and waiters.
const semMode = "SEM"

// A permitRow is a row of the permit table, with its key.
type permitRow struct {
	hash    []byte
	slot    int
	permits int        // the key's n (slot 0's), 0 when slot 0 is gone
	keyID   int64      // the key's row in the lock table; 0 when it has none
	key     dblock.Key // the key, when keyID is set
}

// permitRows reads the permit rows ids, with their keys.
func (in *inspector) permitRows(ctx context.Context, ids []int64) (map[int64]permitRow, error) {
	out := map[int64]permitRow{}
	for chunk := range slices.Chunk(ids, 500) {
		q := "SELECT p.id, p.key_hash, p.slot, COALESCE(z.permits, 0), COALESCE(l.id, 0), COALESCE(l.resource, ''), COALESCE(l.operation, ''), " +
			"COALESCE(l.method, ''), COALESCE(l.user_id, ''), COALESCE(l.is_global, 0) FROM `" + in.permitTable() + "` p " +
			"LEFT JOIN `" + in.permitTable() + "` z ON z.key_hash = p.key_hash AND z.slot = 0 " +
			"LEFT JOIN `" + in.table + "` l ON l.key_hash = p.key_hash WHERE p.id IN (" + placeholders(len(chunk)) + ")"
		if err := scanRows(ctx, in.db, q, args(chunk), func(rows *sql.Rows) error {
			var id int64
			var r permitRow
			k := &r.key
			if err := rows.Scan(&id, &r.hash, &r.slot, &r.permits, &r.keyID, &k.Resource, &k.Operation, &k.Method, &k.User, &k.Global); err != nil {
				return err
			}
			out[id] = r
			return nil
		}); err != nil {
			return nil, fmt.Errorf("reading %s: %w", in.permitTable(), err)
		}
	}
	return out, nil
}

// permitKeys reads the keys of the permit rows ids (a zero key for a
// permit whose key has no row in the lock table).
func (in *inspector) permitKeys(ctx context.Context, ids []int64) (map[int64]dblock.Key, error) {
	rows, err := in.permitRows(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := make(map[int64]dblock.Key, len(rows))
	for id, r := range rows {
		out[id] = r.key
	}
	return out, nil
}

// semaphores describes the semaphores whose permit rows (permitRows) are
// held or waited for, of the keys matching filter: one HeldKey per key,
// in mode SEM, with its n, how many of its permits are held and the
// holders and waiters named (marked in shown). A semaphore whose key has
// no row in the lock table shows its key hash, and only without a filter.
func (in *inspector) semaphores(ctx context.Context, permitRows rowStates, filter dblock.Key, views connViews, shown map[string]bool) ([]HeldKey, error) {
	ids := make([]int64, 0, len(permitRows))
	for id := range permitRows {
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	slices.Sort(ids)
	rows, err := in.permitRows(ctx, ids)
	if err != nil {
		return nil, err
	}
	var out []HeldKey
	byHash := map[string]int{} // index in out
	for _, id := range ids {
		r, ok := rows[id]
		s := permitRows[id]
		held := len(s.holders) > 0 || s.live
		if !ok || r.keyID == 0 && filter != (dblock.Key{}) || r.keyID != 0 && !matches(r.key, filter) || !held && len(s.waiters) == 0 {
			continue // the row is gone, not asked for, or neither held nor waited for
		}
		i, seen := byHash[string(r.hash)]
		if !seen {
			i = len(out)
			byHash[string(r.hash)] = i
			out = append(out, newSemaphore(r, s.source))
		}
		hk := &out[i]
		if held {
			hk.PermitsHeld++
		}
		for _, c := range views.conns(s.holders, false, shown) {
			hk.Holders = append(hk.Holders, permitConn(c, r.slot))
		}
		for _, c := range views.conns(s.waiters, true, shown) {
			hk.Waiters = append(hk.Waiters, permitConn(c, r.slot))
		}
	}
	for i := range out {
		hk := &out[i]
		slices.SortStableFunc(hk.Holders, func(a, b Conn) int { return cmp.Compare(a.ID, b.ID) })
		slices.SortStableFunc(hk.Waiters, func(a, b Conn) int { return cmp.Compare(waited(b), waited(a)) })
		if len(hk.Holders) > 0 {
			hk.Holder = &hk.Holders[0]
		}
	}
	return out, nil
}

// newSemaphore returns the HeldKey of the semaphore of permit row r, seen
// through source, before its holders and waiters are added.
func newSemaphore(r permitRow, source string) HeldKey {
	hk := HeldKey{Key: toKeyJSON(r.key), KeyStr: r.key.String(), RowID: r.keyID, Mode: semMode, Permits: r.permits,
		KeyHash: hex.EncodeToString(r.hash), Source: source, Waiters: []Conn{}}
	if r.keyID == 0 {
		hk.KeyStr = "key_hash=" + hk.KeyHash // the key's row is gone (txlock gc?)
	}
	return hk
}

// permitConn is c, a holder or waiter of the permit in slot.
func permitConn(c Conn, slot int) Conn {
	c.Mode = semMode
	c.PermitSlot = &slot
	return c
}

// scanRows runs q with qargs on db and calls scan on each row.
func scanRows(ctx context.Context, db queryer, q string, qargs []any, scan func(*sql.Rows) error) error {
	rows, err := db.QueryContext(ctx, q, qargs...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}
