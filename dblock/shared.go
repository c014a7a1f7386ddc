package dblock

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
)

// Shared locks: a key's row taken with a shared locking read (LOCK IN
// SHARE MODE, FOR SHARE) instead of FOR UPDATE. See "Shared locks" in the
// package documentation and docs/MODES.md.

// Shared takes keys in shared mode: any number of shared holders of a key
// at once, and none while an exclusive holder (the default mode) has it.
// Without arguments it applies to every key of the call; with keys, to
// those keys only (DoMulti), each of which the call must take.
func Shared(keys ...Key) LockOption {
	return func(lc *lockConfig) error {
		if len(keys) == 0 {
			lc.sharedAll = true
			return nil
		}
		for _, k := range keys {
			if err := k.Validate(); err != nil {
				return fmt.Errorf("dblock: Shared: %w", err)
			}
		}
		lc.sharedKeys = append(lc.sharedKeys, keys...)
		return nil
	}
}

// shared reports whether the acquisition takes key in shared mode.
func (lc *lockConfig) shared(key Key) bool {
	return lc.sharedAll || slices.Contains(lc.sharedKeys, key)
}

// anyShared reports whether the acquisition takes some key shared.
func (lc *lockConfig) anyShared() bool {
	return lc.sharedAll || len(lc.sharedKeys) > 0
}

// callConfig returns the configuration of a call that takes keys: the
// Locker's defaults and opts, checked against each other and the keys.
func (l *Locker) callConfig(opts []LockOption, keys []Key) (lockConfig, error) {
	lc, err := l.lockConfig(opts)
	if err != nil {
		return lc, err
	}
	if lc.minInterval > 0 && len(keys) > 1 {
		return lc, errMinIntervalMulti
	}
	if lc.permits > 0 {
		return lc, l.checkPermits(lc, keys)
	}
	if !lc.anyShared() {
		return lc, nil
	}
	for _, k := range lc.sharedKeys {
		if !slices.Contains(keys, k) {
			return lc, fmt.Errorf("dblock: Shared names %s, which this call does not take", k)
		}
	}
	switch {
	case lc.fencing:
		return lc, errSharedFencing
	case lc.minInterval > 0:
		return lc, errSharedMinInterval
	case l.touch:
		return lc, errSharedMultiWriter
	}
	return lc, nil
}

var (
	errSharedFencing = errors.New("dblock: Shared and Fencing exclude each other: a fencing token orders the holders of a key one after another, " +
		"and shared holders run side by side; take the key exclusively to fence its side effects")
	errSharedMinInterval = errors.New("dblock: Shared and MinInterval exclude each other: MinInterval spaces the runs of one job, which runs alone; take the job's key exclusively")
	errSharedMultiWriter = errors.New("dblock: GaleraMultiWriter: a shared lock cannot be made safe across Galera nodes " +
		"(a reader's transaction writes nothing, so certification never sets it against a writer on another node); " +
		"use GaleraSingleWriter, or take the key exclusively")
	errSharedDefaults = errors.New("dblock: Defaults: Shared is chosen per call, not for every lock of a Locker")
)

// upgradeError refuses to take key exclusively in a transaction that holds
// it shared.
func upgradeError(key Key) error {
	return fmt.Errorf("%w: %s is held shared by this transaction: taking it exclusively would wait for the other shared holders, "+
		"and two holders doing so deadlock; take it exclusively from the start", ErrUpgrade, key)
}

// checkSharedSnapshot is the stale-snapshot check of keys a transaction
// has just taken shared, or permits of (see takeTokens for the exclusive
// one). It bumps, in autocommit, a counter that no key's holders lock (one
// of checkSlots, chosen by the transaction's connection and the check's
// number), then reads it back in the transaction with a locking read
// under innodb_snapshot_isolation: a transaction whose snapshot predates
// the bump (it read before its lock) fails with 1020, and the server rolls
// it back (ErrStaleSnapshot). A locking read creates no snapshot, so the
// transaction's later locks are not made stale by the check, and the next
// shared holder's check does not wait for this one, as it would for the
// key's own counter.
func (l *Locker) checkSharedSnapshot(ctx context.Context, tx stmtRunner, key Key, conn int64, next func() int, holdsOthers bool) error {
	// The counter a check bumped is locked by its transaction until it
	// ends: this transaction's earlier checks, another record of it
	// (another Locker, a wrapped pool) that used the number, or another
	// transaction whose sequence met this one's. The bump does not wait,
	// and the next number is tried.
	var h []byte
	var bumped int64
	for tries := 1; ; tries++ {
		h = checkHash(conn, next())
		res, err := l.side.ExecContext(ctx, l.q.bumpCheck, h)
		if mysqlErrorNumber(err) == erLockWaitTimeout && tries < checkAttempts {
			continue
		}
		if err == nil {
			bumped, err = res.LastInsertId()
		}
		if err != nil {
			return fmt.Errorf("dblock: the stale-snapshot check of %s: bumping a check counter (%d tried): %w", key, tries, withCause(ctx, err))
		}
		break
	}
	hashes := [][]byte{h}
	seen, err := l.scanCounters(ctx, tx, l.q.checkFence, []Key{key}, hashes, true, holdsOthers, func(_ int, token int64) error {
		if token < bumped {
			return fmt.Errorf("dblock: the stale-snapshot check of %s: the transaction reads %d after the bump to %d", key, token, bumped)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if seen != 1 {
		return fmt.Errorf("dblock: the stale-snapshot check of %s: the transaction does not see its counter", key)
	}
	return nil
}

// checkAttempts bounds the counters a shared stale-snapshot check tries
// when the first ones are held.
const checkAttempts = 16

// checkSlots is how many counters the stale-snapshot checks share:
// connection ids grow without end while the server runs, and a counter
// per id would grow the fence table with every new connection.
const checkSlots = 1 << 16

// checkHash is the fence-table counter of the n-th shared stale-snapshot
// check of a transaction on connection conn: one of checkSlots, however
// many connections the server has had. Each connection's checks follow a
// pseudo-random sequence of its own, so that another transaction holding
// counters (however many) meets a check only by chance, and the next
// number is then another chance.
func checkHash(conn int64, n int) []byte {
	h := sha256.Sum256([]byte("txlock snapshot check slot\x00" + strconv.FormatInt(conn, 10) + "\x00" + strconv.Itoa(n)))
	slot := binary.BigEndian.Uint64(h[:8]) % checkSlots
	h = sha256.Sum256([]byte("txlock snapshot check\x00" + strconv.FormatUint(slot, 10)))
	return h[:]
}

// splitShared splits keys into those lc takes shared (or a permit of) and
// the others.
func splitShared(lc lockConfig, keys []Key) (shared, exclusive []Key) {
	for _, k := range keys {
		if lc.shared(k) || lc.permits > 0 {
			shared = append(shared, k)
		} else {
			exclusive = append(exclusive, k)
		}
	}
	return shared, exclusive
}
