package dblock

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Granularities that contain each other: a property of the lock table
// (its hierarchy column, migration 4), switched with `txlock hierarchy`.
// With it on, an acquisition also takes, shared, each key that contains
// one of its keys: Global contains every other key, and each single-field
// key contains the composite keys that set that field. See "The
// hierarchy" in the package documentation and docs/MODES.md.
//
// Every row carries the table's setting and every locking read returns it:
// a Locker starts assuming the hierarchy is off, and an acquisition that
// finds a row saying otherwise gives the row back, reads the setting again
// and starts over, so that no holder ever runs under the other setting.

// containers returns the keys that contain k: none for Global, Global for
// a single-field key, and Global and each single-field key of a composite
// key.
func containers(k Key) []Key {
	if k.Global {
		return nil
	}
	out := []Key{Global()}
	if fieldCount(k) < 2 {
		return out
	}
	for _, c := range [...]Key{{Resource: k.Resource}, {Operation: k.Operation}, {Method: k.Method}, {User: k.User}} {
		if !c.IsZero() {
			out = append(out, c)
		}
	}
	return out
}

// fieldCount returns how many fields k sets (Global counts as none).
func fieldCount(k Key) int {
	n := 0
	for _, f := range [...]string{k.Resource, k.Operation, k.Method, k.User} {
		if f != "" {
			n++
		}
	}
	return n
}

// node is one row an acquisition under the hierarchy locks: a key of the
// call (key), or a key containing one of them, taken shared (container).
type node struct {
	key       Key
	id        int64
	container bool
	composite bool // level: composite keys come after Global and single-field keys
}

// plan returns the rows an acquisition of keys under the hierarchy locks,
// in the one order every acquisition uses (Global and single-field keys
// first, then composite keys, each by row id), so that acquisitions that
// take all their keys in one call cannot deadlock each other. A key that
// is both a key of the call and a container is taken as a key. held
// reports keys the transaction holds already, as a key of the call or as
// a container, which are left out.
func (l *Locker) plan(ctx context.Context, keys []Key, held func(k Key, container bool) bool) ([]node, error) {
	var nodes []node
	add := func(k Key, container bool) error {
		if i := slices.IndexFunc(nodes, func(n node) bool { return n.key == k }); i >= 0 {
			nodes[i].container = nodes[i].container && container
			return nil
		}
		if held(k, container) {
			return nil
		}
		id, err := l.findRow(ctx, k, false)
		if err != nil {
			return err
		}
		nodes = append(nodes, node{key: k, id: id, container: container, composite: fieldCount(k) > 1})
		return nil
	}
	for _, k := range keys {
		if err := add(k, false); err != nil {
			return nil, err
		}
	}
	for _, k := range keys {
		for _, c := range containers(k) {
			if err := add(c, true); err != nil {
				return nil, err
			}
		}
	}
	slices.SortFunc(nodes, func(a, b node) int {
		switch {
		case a.composite != b.composite:
			if a.composite {
				return 1
			}
			return -1
		case a.id != b.id:
			return int(a.id - b.id)
		}
		return bytes.Compare(a.key.canonical(), b.key.canonical())
	})
	return nodes, nil
}

// lockPlan takes the rows of nodes in order in the transaction on tx: each
// run of containers in one locking read (shared), each key of the call
// with its own (lockKey, lockPermit). It returns the outcome of the first
// statement, which reads the session's state when session is set, and on
// failure how many nodes, from the first, it took before the failed
// statement (granted) and that statement's nodes when it read a group
// (partial), some of which it may have locked. A group's wait is measured
// and reported under the call's key (call).
//
// Without waiting (NoWait), the call's own keys come first: a call that
// waits for nothing cannot deadlock, and the key, the row most likely
// held, is then refused before any container is taken.
func (a *acquisition) lockPlan(tx stmtRunner, call Key, nodes []node, session bool, leaseEnd time.Time, holdsOthers bool) (first lockOutcome, granted int, partial []node, err error) {
	if a.lc.noWait {
		slices.SortStableFunc(nodes, func(x, y node) int {
			switch {
			case x.container == y.container:
				return 0
			case y.container:
				return -1
			}
			return 1
		})
	}
	for i := 0; i < len(nodes); {
		start := i
		var out lockOutcome
		var err error
		switch n := nodes[i]; {
		case n.container:
			j := i + 1
			for j < len(nodes) && nodes[j].container {
				j++
			}
			out, err = a.lockKey(tx, call, lockTarget{group: nodes[i:j]}, session, leaseEnd, holdsOthers)
			if err != nil {
				partial = nodes[i:j]
				err = fmt.Errorf("%w (taking, shared, the keys containing it: %s)", err, nodeList(partial))
			}
			i = j
		case a.lc.permits > 0 && a.permitID != 0:
			// A permit this transaction locked in a call that was refused:
			// that one again, granted at once, never a second.
			out, err = a.lockKey(tx, n.key, lockTarget{ids: []int64{a.permitID}, permit: true}, session, leaseEnd, holdsOthers)
			i++
		case a.lc.permits > 0:
			out, err = a.lockPermit(tx, n.key, a.slots, session, leaseEnd, holdsOthers)
			i++
		default:
			out, err = a.lockKey(tx, n.key, lockTarget{id: n.id}, session, leaseEnd, holdsOthers)
			i++
		}
		if err != nil {
			return first, start, partial, err
		}
		if start == 0 {
			first, session = out, false
		}
		holdsOthers = true
	}
	return first, len(nodes), nil, nil
}

// groupExists reports whether every row of group exists (outside any
// transaction): a group read that locked fewer rows found some held, not
// gone.
func (l *Locker) groupExists(ctx context.Context, group []node) (bool, error) {
	for _, n := range group {
		h := n.key.hash()
		ok, err := l.rowExists(ctx, n.id, h[:])
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

// errHierarchyChanged: a row the acquisition locked carries another
// hierarchy setting than the acquisition assumed.
var errHierarchyChanged = errors.New("dblock: the lock table's hierarchy setting is not the one assumed")

// hierarchyAttempts bounds how many times an acquisition starts over
// because the table's hierarchy setting changed (a switch in progress).
const hierarchyAttempts = 50

// checkHierarchy compares the setting a locked row carries (flag) with the
// one the acquisition assumed; on a difference the Locker reads the
// table's setting again.
func (a *acquisition) checkHierarchy(flag int64) error {
	if flag == a.hierFlag() {
		return nil
	}
	a.l.refreshHierarchy(a.ctx)
	return errHierarchyChanged
}

// hierFlag is the value of the hierarchy column of the rows the
// acquisition may lock: 1 with the hierarchy, 0 without. A switch in
// progress marks rows 2, which no acquisition accepts.
func (a *acquisition) hierFlag() int64 {
	if a.hier {
		return 1
	}
	return 0
}

// refreshHierarchy reads the table's hierarchy setting (the default of its
// hierarchy column: see migrations.SetHierarchy) into l.hier. During a
// switch the default is 2 and l.hier is left as it is: every row the
// switch has not finished is refused until it has.
func (l *Locker) refreshHierarchy(ctx context.Context) {
	var def sql.NullString
	err := l.side.QueryRowContext(ctx, "SELECT COLUMN_DEFAULT FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = 'hierarchy'", l.cfg.table).Scan(&def)
	if errors.Is(err, sql.ErrNoRows) {
		// No setting (a table before migration 4, or none): every locking
		// read fails and says which migration is missing.
		l.hierRead.Store(true)
		return
	}
	if err != nil {
		l.log.WarnContext(ctx, "dblock: cannot read the lock table's hierarchy setting", "error", err)
		return
	}
	l.hierRead.Store(true)
	v := strings.Trim(def.String, "'")
	if v != "0" && v != "1" {
		return // a switch in progress
	}
	on := v == "1"
	if l.hier.Swap(on) != on {
		l.log.InfoContext(ctx, "dblock: the lock table's hierarchy setting changed", "hierarchy", on)
	}
}

// hierarchyError is the error of an acquisition in a caller's transaction
// that found the table's hierarchy setting changed.
func hierarchyError(key Key) error {
	return fmt.Errorf("%w: %s: the lock table's hierarchy setting changed (txlock hierarchy) while this transaction took its lock: "+
		"roll the transaction back and try again", ErrHierarchyChanged, key)
}

// nodeList renders nodes for an error: each key, and its mode.
func nodeList(nodes []node) string {
	var b strings.Builder
	for i, n := range nodes {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(n.key.String())
		if n.container {
			b.WriteString(" (shared)")
		}
	}
	return b.String()
}

// hierarchyOr returns err, or for an acquisition that found the table's
// hierarchy setting changed, the error that says so.
func hierarchyOr(key Key, err error) error {
	if errors.Is(err, errHierarchyChanged) {
		return hierarchyError(key)
	}
	return err
}

// joinHierarchy takes keys, which the transaction of s does not hold, and
// the keys containing them that it does not hold, in the transaction on
// tx (see plan), and records the containers as held shared.
func (l *Locker) joinHierarchy(a *acquisition, s *txScope, tx stmtRunner, keys []Key) error {
	pctx, cancel := a.prepCtx()
	defer cancel()
	held := func(k Key, container bool) bool {
		hk := heldKey{l.cfg.table, k}
		if !container {
			hk = l.heldKey(k, &a.lc) // a permit is held apart from the key's lock
		}
		h, _ := s.holds(hk)
		return h
	}
	if a.lc.permits > 0 {
		var err error
		if a.slots, err = l.permitSlots(pctx, keys[0], a.lc.permits); err != nil {
			return a.prepError("finding the key's permits", keys[0], err)
		}
	}
	holdsOthers := s.owner != nil || s.holdsAny()
	if a.lc.permits > 0 {
		a.permitID, _ = s.permitRow(l.heldKey(keys[0], &a.lc)) // taken by a refused call
	}
	for attempt := 1; ; attempt++ {
		nodes, err := l.plan(pctx, keys, held)
		if err != nil {
			return a.prepError("finding the rows of the keys containing it", keys[0], err)
		}
		var leaseEnd time.Time
		if s.owner != nil {
			if leaseEnd, err = s.owner.keeper.fresh(a.ctx); err != nil {
				return err
			}
		}
		out, granted, partial, err := a.lockPlan(tx, keys[0], nodes, false, leaseEnd, holdsOthers)
		if err == nil {
			if a.readConn {
				a.readConn, a.conn = false, out.conn
			}
			for _, n := range nodes {
				if n.container {
					s.add(heldKey{l.cfg.table, n.key}, true)
				}
			}
			return nil
		}
		// What a refused call took stays locked until the transaction
		// ends (InnoDB releases no row lock before): the scope records it
		// as taken, for no caller, and the error says so.
		for _, n := range nodes[:granted] {
			hk := heldKey{l.cfg.table, n.key}
			if !n.container {
				hk = l.heldKey(n.key, &a.lc)
				if a.lc.permits > 0 {
					s.setPermit(hk, a.permitID)
				}
			}
			s.addTaken(hk, n.container || a.lc.shared(n.key))
		}
		for _, n := range partial {
			s.addTaken(heldKey{l.cfg.table, n.key}, true)
		}
		if (granted > 0 || len(partial) > 0) && !errors.Is(err, ErrLockLost) {
			kept := nodeList(nodes[:granted])
			if len(partial) > 0 {
				kept = strings.TrimPrefix(kept+", perhaps "+nodeList(partial), ", ")
			}
			err = fmt.Errorf("%w (the transaction keeps what this call took before its refusal, until it ends: %s; roll it back to release them)", err, kept)
		}
		if !errors.Is(err, errRowGone) || attempt == 3 {
			return err
		}
		for _, n := range nodes {
			l.cache.forget(n.key, n.id)
		}
	}
}
