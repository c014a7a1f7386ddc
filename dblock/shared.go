package dblock

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
// has just taken shared (see takeTokens for the exclusive one). Each key's
// counter is bumped in autocommit, then read back in the transaction with
// a plain, consistent read: a transaction whose snapshot predates the bump
// (it read before its lock) sees an older value. The exclusive check's
// locking read would hold the counter's row, which the next shared
// holder's bump then waits for; a consistent read holds nothing. Unlike
// the exclusive check, the server does not roll the transaction back. A
// permit's check bumps the counter of its semaphore's queue, not the
// key's: that one belongs to the key's lock, whose fencing holders hold it.
func (l *Locker) checkSharedSnapshot(ctx context.Context, tx stmtRunner, keys []Key, holdsOthers, permit bool) error {
	counter := func(k Key) []byte {
		if permit {
			return queueHash(k)
		}
		h := k.hash()
		return h[:]
	}
	bumped := make([]int64, len(keys))
	hashes := make([][]byte, len(keys))
	for i, k := range keys {
		hashes[i] = counter(k)
		t, err := l.bumpCounter(ctx, "the stale-snapshot check of", k, hashes[i])
		if err != nil {
			return err
		}
		bumped[i] = t
	}
	seen, err := l.scanCounters(ctx, tx, l.q.readFence, keys, hashes, false, holdsOthers, func(i int, token int64) error {
		if token < bumped[i] {
			return fmt.Errorf("%w: %s: the transaction had read before this shared lock, so its reads may predate the last exclusive holder's commit; "+
				"roll it back and take the lock before reading (the transaction is still open)", ErrStaleSnapshot, keys[i])
		}
		return nil
	})
	if err != nil {
		return err
	}
	if seen != len(keys) {
		// The bump created a counter that the transaction's snapshot,
		// older than the bump, cannot see: it had read before the lock.
		return fmt.Errorf("%w: %s: the transaction had read before this shared lock (its snapshot predates the check's counter), so its reads may predate the last exclusive holder's commit; "+
			"roll it back and take the lock before reading (the transaction is still open)", ErrStaleSnapshot, keys[0])
	}
	return nil
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
