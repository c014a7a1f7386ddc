package dblock

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// Holders returns who holds each held key that matches filter, in key
// row order. The zero Key matches every key; otherwise a key matches when
// it has every field that filter sets, with the same value, and a
// Resource ending in "*" matches every resource that begins with what
// precedes the "*" (Key{Resource: "order:*"}, Key{User: "u-7"}). A key
// whose holder could not be named (see ErrHolderUnknown) has ConnID 0;
// a key released during the call is left out. On MariaDB it probes the
// matching rows with SKIP LOCKED (each free row is locked for that
// statement: a TryLock of it at that instant fails), then each held key
// as Holder does: see "Who holds a lock" in the package documentation for
// the costs.
func (l *Locker) Holders(ctx context.Context, filter Key) ([]Holder, error) {
	if err := l.checkInspect(ctx, "Holders"); err != nil {
		return nil, err
	}
	if err := validFilter(filter); err != nil {
		return nil, err
	}
	var ids []int64
	var found []heldRow
	if l.srv.mariaDB {
		held, err := l.probeHeld(ctx, filter)
		if err != nil {
			return nil, l.holdersError(ctx, err)
		}
		for _, id := range held {
			f, err := l.probeHolder(ctx, id)
			switch {
			case errors.Is(err, errFree) || errors.Is(err, errGone):
				continue
			case err != nil:
				return nil, l.holdersError(ctx, err)
			}
			ids, found = append(ids, id), append(found, f)
		}
	} else {
		rows, err := l.dataLocks(ctx, 0)
		if err != nil {
			return nil, l.holdersError(ctx, err)
		}
		for _, id := range slices.Sorted(maps.Keys(rows)) {
			ids, found = append(ids, id), append(found, *rows[id])
		}
	}
	keys, err := l.keysOf(ctx, ids)
	if err != nil {
		return nil, l.holdersError(ctx, err)
	}
	var keep []Key
	var kept []heldRow
	for i, id := range ids {
		if k, ok := keys[id]; ok && filterMatches(k, filter) {
			keep, kept = append(keep, k), append(kept, found[i])
		}
	}
	return l.describe(ctx, keep, kept)
}

// holdersError maps what the listing of holders failed with.
func (l *Locker) holdersError(ctx context.Context, err error) error {
	if mysqlErrorNumber(err) == erNoSuchTable {
		return fmt.Errorf("%w: %w", ErrTableMissing, err)
	}
	return fmt.Errorf("dblock: Holders: %w", withCause(ctx, err))
}

// validFilter checks a filter of Holders: a Key, except that it may be
// zero and its Resource may end in "*".
func validFilter(filter Key) error {
	if filter.IsZero() {
		return nil
	}
	k := filter
	if p, ok := strings.CutSuffix(k.Resource, "*"); ok {
		k.Resource = p + "x" // any valid resource: the prefix is what is checked
	}
	if err := k.Validate(); err != nil {
		return fmt.Errorf("dblock: Holders: filter: %w", err)
	}
	return nil
}

// filterMatches reports whether k matches filter (see Holders).
func filterMatches(k, filter Key) bool {
	res := k.Resource == filter.Resource
	if p, ok := strings.CutSuffix(filter.Resource, "*"); ok {
		res = strings.HasPrefix(k.Resource, p)
	}
	return (filter.Resource == "" || res) &&
		(filter.Operation == "" || k.Operation == filter.Operation) &&
		(filter.Method == "" || k.Method == filter.Method) &&
		(filter.User == "" || k.User == filter.User) &&
		(!filter.Global || k.Global)
}

// filterSQL returns the conditions (each after " AND ") and parameters
// that select the rows matching filter.
func filterSQL(filter Key) (string, []any) {
	var b strings.Builder
	var args []any
	for _, c := range [...]struct{ col, v string }{
		{"resource", filter.Resource}, {"operation", filter.Operation},
		{"method", filter.Method}, {"user_id", filter.User},
	} {
		switch p, prefix := strings.CutSuffix(c.v, "*"); {
		case c.v == "":
		case prefix && c.col == "resource":
			b.WriteString(" AND resource LIKE ? ESCAPE '!'")
			args = append(args, strings.NewReplacer("!", "!!", "%", "!%", "_", "!_").Replace(p)+"%")
		default:
			b.WriteString(" AND " + c.col + " = ?")
			args = append(args, c.v)
		}
	}
	if filter.Global {
		b.WriteString(" AND is_global = 1")
	}
	return b.String(), args
}

// probeBatch is how many key rows one SKIP LOCKED probe of Holders locks.
const probeBatch = 500

// probeHeld returns the ids of the rows matching filter that are held
// (MariaDB): batch by batch, a statement in autocommit on the side pool
// locks the free ones with SKIP LOCKED, for as long as it runs; the rows
// it skips are held.
func (l *Locker) probeHeld(ctx context.Context, filter Key) ([]int64, error) {
	cond, args := filterSQL(filter)
	var held []int64
	for after := int64(0); ; {
		ids, err := queryInt64s(ctx, l.side, "SELECT id FROM "+l.q.table+" WHERE id > ?"+cond+" ORDER BY id LIMIT "+strconv.Itoa(probeBatch),
			append([]any{after}, args...)...)
		if err != nil || len(ids) == 0 {
			return held, err
		}
		// In autocommit: the free rows are locked for the statement
		// only, not until a ROLLBACK a round trip later.
		free, err := queryInt64s(ctx, l.side, "SELECT id FROM "+l.q.table+" WHERE id IN ("+joinInts(ids)+") FOR UPDATE SKIP LOCKED")
		if err != nil {
			return nil, err
		}
		for _, id := range ids {
			if !slices.Contains(free, id) {
				held = append(held, id)
			}
		}
		after = ids[len(ids)-1]
	}
}

// keysOf reads the keys of the rows ids.
func (l *Locker) keysOf(ctx context.Context, ids []int64) (map[int64]Key, error) {
	out := make(map[int64]Key, len(ids))
	for chunk := range slices.Chunk(ids, probeBatch) {
		rows, err := l.side.QueryContext(ctx, "SELECT id, resource, operation, method, user_id, is_global FROM "+l.q.table+" WHERE id IN ("+joinInts(chunk)+")")
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id int64
			var k Key
			if err := rows.Scan(&id, &k.Resource, &k.Operation, &k.Method, &k.User, &k.Global); err != nil {
				rows.Close()
				return nil, err
			}
			out[id] = k
		}
		if err := rows.Close(); err != nil {
			return nil, err
		}
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}
