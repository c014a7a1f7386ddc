package dblock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"gorm.io/gorm"
)

// join takes keys in the transaction of s (a caller's, or one the Locker
// opened for an outer call), unless it holds them already (reentrancy).
func (l *Locker) join(ctx context.Context, s *txScope, keys []Key, lc lockConfig) error {
	if err := s.endedErr(); err != nil {
		// A context kept past its lock (Lock.Context after Commit, or
		// context.WithoutCancel of fn's context): joining would run fn
		// without the lock.
		return fmt.Errorf("%w: %s: the transaction this context carries has ended: %w", ErrNoTransaction, keys[0], err)
	}
	if l.touch && s.owner == nil {
		return errMultiWriterJoin
	}
	if lc.maxHold > 0 && s.owner == nil {
		if lc.maxHoldCall {
			return errMaxHoldCallerTx
		}
		lc.maxHold = 0 // a Locker's default does not reach a caller's transaction
	}
	tx, err := s.runner()
	if err != nil {
		return err
	}
	l.adopt(s)
	if !l.hierRead.Load() {
		// A caller's transaction cannot start over: the Locker reads the
		// table's setting before its first acquisition in one, rather than
		// learn it from a row it locked.
		l.refreshHierarchy(ctx)
	}
	a := l.newAcquisition(ctx, lc)
	// The connection's id, for its label: a caller's transaction's first
	// lock, or any in a transaction another Locker (another table) opened.
	a.readConn = !l.sessions.off.Load() && (s.owner == nil && !s.holdsAny() || s.owner != nil && s.owner.l != l)
	// A shared key or a permit's stale-snapshot check needs the
	// connection's id (checkSharedSnapshot): read along, at no round trip.
	a.readConn = a.readConn || (lc.anyShared() || lc.permits > 0) && !lc.fresh && l.srv.snapshotIsolation
	// An upgrade is refused before anything is locked, so that a refused
	// call leaves no key of its own held.
	for _, key := range keys {
		hk := l.heldKey(key, &lc)
		held, shared := s.holds(hk)
		if (held && shared || !held && s.takenShared(hk)) && !lc.shared(key) && lc.permits == 0 {
			return upgradeError(key)
		}
	}
	var newKeys, heldKeys []Key // locked now; held before and without a token yet
	var want []Key              // under the hierarchy: keys to take with their containers
	for _, key := range keys {
		if held, _ := s.holds(l.heldKey(key, &lc)); held {
			if s.owner == nil {
				// A caller's transaction may have ended behind the
				// context's back: one locking read (granted at once) tells.
				if err := l.recheckHeld(a, s, tx, key); err != nil {
					return hierarchyOr(key, err)
				}
			}
			if _, ok := s.token(l.cfg.table, key); lc.fencing && !ok {
				heldKeys = append(heldKeys, key)
			}
			continue
		}
		if a.hier {
			want = append(want, key) // taken below, with the keys containing them
			continue
		}
		done := l.tel.startAcquire(ctx, key, lc.modeOf(key), lc.noWait)
		err := hierarchyOr(key, l.joinKey(a, s, tx, key))
		done(err)
		if err != nil {
			return err
		}
		if lc.permits > 0 {
			s.setPermit(l.heldKey(key, &lc), a.permitID)
		}
		// Recorded at once: should a later key of the call be refused, the
		// transaction keeps this one until it ends.
		s.addTaken(l.heldKey(key, &lc), lc.shared(key))
		newKeys = append(newKeys, key)
	}
	if len(want) > 0 {
		done := l.tel.startAcquire(ctx, want[0], lc.modeOf(want[0]), lc.noWait)
		err := hierarchyOr(want[0], l.joinHierarchy(a, s, tx, want))
		done(err)
		if err != nil {
			return err
		}
		if lc.permits > 0 {
			s.setPermit(l.heldKey(want[0], &lc), a.permitID)
		}
		newKeys = append(newKeys, want...)
	}
	// MaxHold bounds the statements below too.
	if lc.maxHold > 0 {
		if err := s.owner.boundHold(ctx, lc.maxHold); err != nil {
			return err
		}
	}
	// A transaction that may have read before these locks is checked
	// (the token read fails if its snapshot predates them), unless the
	// caller promised it has not; fencing takes the tokens either way.
	check := len(newKeys) > 0 && !lc.fresh && l.srv.snapshotIsolation
	if check && (lc.anyShared() || lc.permits > 0) {
		// Shared keys and permits are checked on a counter of the
		// transaction's own (fencing is refused with them).
		var shared []Key
		shared, newKeys = splitShared(lc, newKeys)
		if len(shared) > 0 {
			conn := a.conn
			if conn == 0 {
				if err := tx.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&conn); err != nil {
					return s.lossOr(fmt.Errorf("dblock: the stale-snapshot check of %s: reading the connection's id: %w", shared[0], err))
				}
			}
			if err := l.checkSharedSnapshot(ctx, tx, shared[0], conn, s.nextCheck, s.owner != nil || s.holdsAny()); err != nil {
				return s.lossOr(err)
			}
			for _, k := range shared {
				s.add(l.heldKey(k, &lc), true)
			}
		}
		check = len(newKeys) > 0
	}
	for _, t := range [...]struct {
		keys  []Key
		check bool
	}{{heldKeys, false}, {newKeys, check}} {
		if len(t.keys) == 0 || !(lc.fencing || t.check) {
			continue
		}
		tokens, err := l.takeTokens(ctx, tx, t.keys, s.owner != nil || s.holdsAny(), t.check)
		if err != nil {
			return s.lossOr(err)
		}
		for i, k := range t.keys {
			s.setToken(l, k, tokens[i])
		}
	}
	for _, k := range newKeys {
		s.add(l.heldKey(k, &lc), lc.shared(k))
	}
	l.labelConn(a.conn, nil)
	// A run is judged once per transaction: a key whose run this
	// transaction recorded (and did not roll back to a savepoint before)
	// is part of it; one held without a recorded run (taken without
	// MinInterval, or refused with ErrTooSoon) is judged now.
	if lc.minInterval > 0 {
		n, ok := s.run(l, keys[0])
		if ok {
			if ok, err = l.sameRun(ctx, tx, keys[0], n); err != nil {
				return s.lossOr(err)
			}
		}
		if !ok {
			if n, err = l.recordRun(ctx, tx, keys[0], lc.minInterval); err != nil {
				return s.lossOr(err)
			}
			s.setRun(l, keys[0], n)
		}
	}
	return nil
}

// errMultiWriterJoin refuses a lock in a caller's transaction on Galera in
// multi-writer mode.
var errMultiWriterJoin = errors.New("dblock: GaleraMultiWriter: a lock in a transaction of yours (LockTx, Do under WithTx) cannot be made safe across Galera nodes: " +
	"when another node's holder commits first, the cluster aborts your transaction, and the abort is not always reported to your statements, " +
	"which then run in autocommit outside any lock; take the lock with Do or Lock, whose transaction the Locker checks before COMMIT")

// joinKey takes key in the transaction of s, recreating a row that was
// collected since its id was cached.
func (l *Locker) joinKey(a *acquisition, s *txScope, tx stmtRunner, key Key) error {
	pctx, cancel := a.prepCtx()
	defer cancel()
	holdsOthers := s.owner != nil || s.holdsAny()
	for attempt := 1; ; attempt++ {
		id, err := l.findRow(pctx, key, attempt > 1)
		if err != nil {
			return a.prepError("finding the key's row", key, err)
		}
		var leaseEnd time.Time
		if s.owner != nil {
			if leaseEnd, err = s.owner.keeper.fresh(a.ctx); err != nil {
				return err
			}
		}
		var out lockOutcome
		if a.lc.permits > 0 {
			var slots []int64
			if slots, err = l.permitSlots(pctx, key, a.lc.permits); err != nil {
				return a.prepError("finding the key's permits", key, err)
			}
			out, err = a.lockPermit(tx, key, slots, false, leaseEnd, holdsOthers)
		} else {
			out, err = a.lockKey(tx, key, lockTarget{id: id}, false, leaseEnd, holdsOthers)
		}
		if err == nil && a.readConn {
			a.readConn, a.conn = false, out.conn
		}
		if !errors.Is(err, errRowGone) {
			return err
		}
		// The locking read of the missing row took a gap lock; `txlock gc`
		// never deletes the newest row, so that gap lies below the highest
		// id and the new row, with an id above it, does not wait for this
		// transaction. A row deleted otherwise fails fast (see findRow).
		l.cache.forget(key, id)
		if attempt == 3 {
			return fmt.Errorf("dblock: the row of %s in %s disappeared %d times while locking it: is a gc deleting live rows?", key, l.cfg.table, attempt)
		}
	}
}

// runner returns where the library's statements run in s's transaction:
// the keeper of a transaction the Locker opened, or the caller's own
// transaction, unwrapped from gorm's prepared-statement layer (the
// library's statements are never prepared).
func (s *txScope) runner() (stmtRunner, error) {
	if s.owner != nil {
		return ownStmts{s.owner.keeper}, nil
	}
	pool, err := txPool(s.tx)
	if c, ok := pool.(*keeper); ok {
		return ownStmts{c}, nil
	}
	return pool, err
}

// txPool returns the connection of the transaction tx, below gorm's
// prepared-statement layer.
func txPool(tx *gorm.DB) (gorm.ConnPool, error) {
	if tx == nil {
		return nil, fmt.Errorf("%w: nil *gorm.DB", ErrNoTransaction)
	}
	if tx.Statement == nil || tx.Statement.ConnPool == nil {
		return nil, fmt.Errorf("%w: the *gorm.DB has no connection", ErrNoTransaction)
	}
	pool := tx.Statement.ConnPool
	if p, ok := pool.(*gorm.PreparedStmtTX); ok {
		pool = p.Tx
	}
	if f, ok := pool.(failedPool); ok {
		return nil, f.err
	}
	if _, ok := pool.(gorm.TxCommitter); !ok {
		return nil, fmt.Errorf("%w: the *gorm.DB is not inside a transaction (start one with db.Begin or db.Transaction)", ErrNoTransaction)
	}
	if c, ok := pool.(*lockConn); ok {
		return c.keeper, nil
	}
	return pool, nil
}

// recheckHeld checks that the caller's transaction of s, which holds key
// by the scope's record, is still open: one locking read of what it holds,
// granted at once (the key's row, or the permit row it holds).
func (l *Locker) recheckHeld(a *acquisition, s *txScope, tx stmtRunner, key Key) error {
	if a.lc.permits > 0 {
		if id, ok := s.permitRow(l.heldKey(key, &a.lc)); ok {
			_, err := a.lockKey(tx, key, lockTarget{ids: []int64{id}, permit: true}, false, time.Time{}, true)
			return err
		}
	}
	return l.joinKey(a, s, tx, key)
}
