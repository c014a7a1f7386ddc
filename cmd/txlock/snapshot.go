package main

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/sessions"
	"github.com/txlock/txlock/schema"
)

// rowState is what a snapshot knows of one key row.
type rowState struct {
	holders map[string]connMode // by trx, each proven to hold the row now
	waiters map[string]connMode
	// unnamedShared: MariaDB shows the row held shared by its transaction
	// 0, that is by one or more transactions that have written nothing,
	// which cannot be named; unnamedWaiting: requests of such transactions
	// wait for it.
	unnamedShared, unnamedWaiting bool
	source                        string
	live                          bool // the SKIP LOCKED probe found it held
}

// connMode is a connection and the mode it holds a row in, or asks for.
type connMode struct {
	conn int64
	mode string // "X" or "S"
}

// rowStates are the key rows a snapshot knows of, by id.
type rowStates map[int64]*rowState

func (r rowStates) state(id int64) *rowState {
	s := r[id]
	if s == nil {
		s = &rowState{holders: map[string]connMode{}, waiters: map[string]connMode{}}
		r[id] = s
	}
	return s
}

// rowsFromCache keeps the entries of the lock view on the lock table's
// rows (permit false) or the permit table's (permit true) that still hold
// now, and returns how many it left out. procs is PROCESSLIST read after the
// cache. On MariaDB a holder is kept only if the fill was made after
// before was read and the holder's connection provably stayed in one
// transaction from before to procs (liveness.go): a cached holder that may
// have released since is never named. A waiter is kept if its connection
// still runs a statement (and, on MariaDB, the fill is fresh). Probes of
// txlock itself (--identify, release) are not waiters anyone needs to see.
func (in *inspector) rowsFromCache(c cacheRead, before, procs map[int64]procInfo, permit bool) (rowStates, int) {
	rows := rowStates{}
	source := "lock_waits"
	if !in.srv.MariaDB {
		source = "data_locks"
	}
	left := 0
	for _, e := range c.entries {
		if t, ok := c.trxs[e.trx]; ok && t.probe || e.permit != permit {
			continue
		}
		if e.trx == unnamedTrx {
			// Not a connection: every transaction that has written
			// nothing. Its lock tells the row is held shared (a granted
			// shared lock, or a pending shared request, which addKeys
			// tells apart), or waited for.
			if !c.fresh {
				left++
				continue
			}
			s := rows.state(e.rowID)
			s.source = source
			switch {
			case e.waiting:
				s.unnamedWaiting = true
			case e.mode == "S":
				s.unnamedShared = true
			}
			continue
		}
		p, alive := procs[e.conn]
		keep := alive && c.fresh
		switch {
		case e.waiting:
			keep = keep && (p.cmd == "Query" || p.cmd == "Execute")
		case in.srv.MariaDB:
			keep = keep && sameTransaction(before[e.conn], p)
		}
		if !keep {
			left++
			continue
		}
		s := rows.state(e.rowID)
		s.source = source
		if e.waiting {
			s.waiters[e.trx] = connMode{e.conn, e.mode}
		} else if h, ok := s.holders[e.trx]; !ok || h.mode != "X" {
			s.holders[e.trx] = connMode{e.conn, e.mode} // X if it holds both
		}
	}
	return rows, left
}

// snapshot assembles the held keys matching filter: PROCESSLIST as a
// baseline (MariaDB), the lock views, the SKIP LOCKED probe (MariaDB),
// PROCESSLIST again, --identify for held keys with no proven holder, then
// the keys, their connections and the notes.
func (in *inspector) snapshot(ctx context.Context, filter dblock.Key) (*Snapshot, error) {
	snap := &Snapshot{
		Table:  in.table,
		Server: in.srv.String(),
		Flavor: in.srv.Flavor(),
		Where:  in.where,
		At:     time.Now().UTC(),
		Keys:   []HeldKey{},
		Notes:  []string{},
	}
	// The baseline that cached holders are checked against (MariaDB).
	var before map[int64]procInfo
	if in.srv.MariaDB {
		var err error
		if before, err = in.processes(ctx); err != nil {
			return nil, err
		}
	}
	cache, err := in.readCache(ctx)
	if err != nil {
		return nil, err
	}
	probed := in.srv.MariaDB && in.probe
	var held, heldPermits []int64
	noPermits := false // the permit table is missing
	if probed {
		start := time.Now()
		if held, err = in.probeHeld(ctx, filter); err != nil {
			return nil, err
		}
		if heldPermits, noPermits, err = in.probePermits(ctx, filter); err != nil {
			return nil, err
		}
		d := time.Since(start).Seconds()
		snap.ProbeSeconds = &d
	}
	procs, err := in.processes(ctx)
	if err != nil {
		return nil, err
	}
	// Which rows are held, by whom, and who waits. A transaction waiting
	// for one row may hold another: it is listed under each.
	rowsByID, left := in.rowsFromCache(cache, before, procs, false)
	permitRows, permitsLeft := in.rowsFromCache(cache, before, procs, true)
	left += permitsLeft
	if probed {
		released, err := in.applyProbe(ctx, rowsByID, held, filter, in.keyRows)
		if err != nil {
			return nil, err
		}
		left += released
		if released, err = in.applyProbe(ctx, permitRows, heldPermits, filter, in.permitKeys); err != nil {
			return nil, err
		}
		left += released
	}
	var named identified
	if in.srv.MariaDB && in.identify {
		if named, procs, err = in.identifyHolders(ctx, rowSet{in.table, rowsByID}, rowSet{in.permitTable(), permitRows}); err != nil {
			return nil, err
		}
	}
	candidates := cache.trxs
	if !cache.fresh {
		candidates = nil // what it shows may have ended long ago
	}
	if err := in.addKeys(ctx, snap, rowsByID, permitRows, filter, connViews{cache.trxs, procs}, candidates); err != nil {
		return nil, err
	}
	if noPermits {
		snap.Notes = append(snap.Notes, "no semaphores: the permit table "+in.permitTable()+" is missing; run `txlock migrate up`")
	}
	snap.Notes = append(snap.Notes, in.notes(cache.fresh, left, unknownsOf(snap.Keys), named)...)
	if err := in.addLabels(ctx, snap); err != nil {
		return nil, err
	}
	return snap, nil
}

// addLabels sets the label of every connection snap shows, from the
// session table (rows of a past server run are ignored); with the table
// missing (schema at version 1) a note says so.
func (in *inspector) addLabels(ctx context.Context, snap *Snapshot) error {
	var conns []*Conn
	for i := range snap.Keys {
		k := &snap.Keys[i]
		if k.Holder != nil {
			conns = append(conns, k.Holder) // the first of Holders
		}
		for j := range k.Holders {
			conns = append(conns, &k.Holders[j]) // each shared or permit holder
		}
		for j := range k.Waiters {
			conns = append(conns, &k.Waiters[j])
		}
	}
	for i := range snap.Candidates {
		conns = append(conns, &snap.Candidates[i])
	}
	if len(conns) == 0 {
		return nil
	}
	ids := make([]int64, 0, len(conns))
	for _, c := range conns {
		ids = append(ids, c.ID)
	}
	slices.Sort(ids)
	labels, err := sessions.Labels(ctx, in.db, schema.SessionTable(in.table), in.srv.MariaDB, slices.Compact(ids))
	if sessions.Missing(err) {
		snap.Notes = append(snap.Notes, "no labels: the session table "+schema.SessionTable(in.table)+" is missing; run `txlock migrate up`")
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the labels of %s: %w", schema.SessionTable(in.table), err)
	}
	for _, c := range conns {
		c.Label = labels[c.ID]
	}
	return nil
}

// applyProbe marks the rows that the probe found held (held) as live, and
// drops the rows that the cache shows held but the probe could lock: the
// probe is live, the cache is not, so those were released since the cache
// was filled. (A row outside filter was not probed, and is not shown.) It
// returns how many cache entries of keys matching filter it dropped.
// keysOf reads the keys of the rows (key rows, or permit rows).
func (in *inspector) applyProbe(ctx context.Context, rowsByID rowStates, held []int64, filter dblock.Key, keysOf keysOfFunc) (int, error) {
	for _, id := range held {
		s := rowsByID.state(id)
		s.live = true
		if s.source == "" {
			s.source = "probe"
		}
	}
	var released []int64
	for id, s := range rowsByID {
		if !s.live {
			released = append(released, id)
		}
	}
	keys, err := keysOf(ctx, released)
	if err != nil {
		return 0, err
	}
	left := 0
	for _, id := range released {
		if k, ok := keys[id]; ok && matches(k, filter) {
			left += len(rowsByID[id].holders) + len(rowsByID[id].waiters)
		}
		delete(rowsByID, id)
	}
	return left, nil
}

// keysOfFunc reads the keys of rows by id (keyRows, permitKeys).
type keysOfFunc func(ctx context.Context, ids []int64) (map[int64]dblock.Key, error)

// addKeys adds to snap the rows of rowsByID whose keys match filter, then
// the semaphores of permitRows, and, when a key's holder is unknown or a
// shared one unnamed, the transactions of candidates that may hold it.
// views describe the connections.
func (in *inspector) addKeys(ctx context.Context, snap *Snapshot, rowsByID, permitRows rowStates, filter dblock.Key, views connViews, candidates map[string]trxInfo) error {
	unknownHolder := false
	ids := make([]int64, 0, len(rowsByID))
	for id := range rowsByID {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	keys, err := in.keyRows(ctx, ids)
	if err != nil {
		return err
	}
	shown := map[string]bool{} // the transactions shown as a holder or waiter
	for _, id := range ids {
		k, ok := keys[id]
		if !ok || !matches(k, filter) {
			continue // the row is gone, or not asked for
		}
		s := rowsByID[id]
		if len(s.holders) == 0 && len(s.waiters) == 0 && !s.live && !s.unnamedShared && !s.unnamedWaiting {
			continue
		}
		hk := views.heldKey(id, k, s, shown)
		unknownHolder = unknownHolder || len(hk.Holders) == 0 || hk.UnnamedShared
		snap.Keys = append(snap.Keys, hk)
	}
	sems, err := in.semaphores(ctx, permitRows, filter, views, shown)
	if err != nil {
		return err
	}
	for _, hk := range sems {
		unknownHolder = unknownHolder || len(hk.Holders) < hk.PermitsHeld
	}
	snap.Keys = append(snap.Keys, sems...)
	if unknownHolder {
		snap.Candidates = views.candidates(candidates, shown)
	}
	return nil
}

// heldKey describes key k, row id, as s shows it, and marks the
// transactions it shows in shown.
func (v connViews) heldKey(id int64, k dblock.Key, s *rowState, shown map[string]bool) HeldKey {
	hk := HeldKey{Key: toKeyJSON(k), KeyStr: k.String(), RowID: id, Source: s.source, Waiters: []Conn{}, UnnamedWaiting: s.unnamedWaiting}
	hk.Holders = v.conns(s.holders, false, shown)
	exclusive := slices.ContainsFunc(hk.Holders, func(c Conn) bool { return c.Mode == "X" })
	// Beside a named exclusive holder, transaction 0's shared lock is a
	// pending request: nobody else can hold the row.
	hk.UnnamedShared = s.unnamedShared && !exclusive
	switch {
	case exclusive:
		hk.Mode = "X"
	case len(hk.Holders) > 0 || hk.UnnamedShared:
		hk.Mode = "S"
	}
	if len(hk.Holders) > 0 {
		hk.Holder = &hk.Holders[0]
	}
	hk.Waiters = append(hk.Waiters, v.conns(s.waiters, true, shown)...)
	slices.SortStableFunc(hk.Waiters, func(a, b Conn) int { return cmp.Compare(waited(b), waited(a)) })
	return hk
}

// conns describes the holders or waiters (waiting) of a row, by
// transaction, each with its mode, and marks them in shown.
func (v connViews) conns(m map[string]connMode, waiting bool, shown map[string]bool) []Conn {
	var out []Conn
	for _, trx := range sortedKeys(m) {
		c := v.conn(trx, m[trx].conn, waiting)
		c.Mode = m[trx].mode
		out = append(out, c)
		shown[trx] = true
	}
	return out
}

// connViews are what INNODB_TRX (by transaction) and PROCESSLIST (by
// connection) show of the connections.
type connViews struct {
	trxs  map[string]trxInfo
	procs map[int64]procInfo
}

// conn describes connection connID in transaction trx (a key of trxs), a
// waiter or a holder.
func (v connViews) conn(trx string, connID int64, waiting bool) Conn {
	c := Conn{ID: connID, TrxID: trx}
	if t, ok := v.trxs[trx]; ok {
		age := t.age
		c.TrxAge = &age
		c.TrxID = t.id
	}
	if c.TrxID == unnamedTrx {
		c.TrxID = "" // MariaDB's id of every transaction that has written nothing
	}
	if p, ok := v.procs[connID]; ok {
		c.User, c.Host, c.DB, c.Cmd, c.State = p.user, p.host, p.db, p.cmd, p.state
		secs := p.secs
		switch {
		case waiting && (p.cmd == "Query" || p.cmd == "Execute"):
			c.Waited = &secs
		case !waiting && p.cmd == "Sleep":
			c.Idle = &secs
		}
	}
	return c
}

// candidates returns the transactions of trxs that may hold a key shown
// with an unknown holder: alive, not shown, not a probe of txlock, holding
// row locks on some table and not waiting; by connection id.
func (v connViews) candidates(trxs map[string]trxInfo, shown map[string]bool) []Conn {
	var out []Conn
	for _, trx := range sortedKeys(trxs) {
		t := trxs[trx]
		if _, alive := v.procs[t.conn]; shown[trx] || !alive || t.probe || t.rows == 0 || t.tables == 0 || t.state == "LOCK WAIT" {
			continue
		}
		c := v.conn(trx, t.conn, false)
		c.Rows = t.rows
		out = append(out, c)
	}
	slices.SortStableFunc(out, func(a, b Conn) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// waited is how long c has waited, -1 when unknown (so that it sorts
// first).
func waited(c Conn) float64 {
	if c.Waited == nil {
		return -1
	}
	return *c.Waited
}

// sortedKeys returns the keys of m, numeric strings (transaction ids) in
// numeric order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b string) int {
		if len(a) != len(b) { // numeric strings
			return len(a) - len(b)
		}
		return strings.Compare(a, b)
	})
	return out
}
