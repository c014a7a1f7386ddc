package dblock

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Counting semaphores: a key taken with Permits(n) has n permit rows in
// the permit table, and a holder locks one of them in its transaction as
// a lock locks its key row. See "Semaphores" in the package documentation
// and docs/MODES.md.

// MaxPermits is the most permits a key's semaphore can have.
const MaxPermits = 1000

// permitCacheSize is how many semaphores' permit rows a Locker keeps.
const permitCacheSize = 1000

// permitRecheck bounds a waiter's wait on the one permit it queued for:
// a permit released while no waiter is queued on it reaches a waiter of
// another permit within this, or the next acquisition at once.
const permitRecheck = 500 * time.Millisecond

// Permits makes the acquisition take one of n permits of its key, a
// counting semaphore: at most n holders of the key at once, each released
// with its transaction. n is the key's: the first call writes it, and a
// call with another n fails with ErrPermits. A semaphore is apart from
// the key's lock: Lock and Permits of one key do not exclude each other.
func Permits(n int) LockOption {
	return func(lc *lockConfig) error {
		if n < 1 || n > MaxPermits {
			return fmt.Errorf("dblock: Permits must be between 1 and %d, got %d", MaxPermits, n)
		}
		lc.permits = n
		return nil
	}
}

var (
	errPermitsMulti = errors.New("dblock: Permits applies to one key (a semaphore's), not to DoMulti's several: " +
		"take the permit with Do and the other keys inside it")
	errPermitsMode = errors.New("dblock: Permits excludes Shared, Fencing and MinInterval: a permit is neither a shared lock nor an exclusive one, " +
		"and its holders run side by side")
	errPermitsMultiWriter = errors.New("dblock: GaleraMultiWriter: a semaphore cannot be made safe across Galera nodes (row locks are local to a node); use GaleraSingleWriter")
	errPermitsDefaults    = errors.New("dblock: Defaults: Permits is chosen per call, not for every lock of a Locker")
	// errPermitsBusy: every permit is held; the acquisition queues for one.
	errPermitsBusy = errors.New("dblock: every permit is held")
	// errRecheck: a waiter's wait on its permit reached permitRecheck.
	errRecheck = errors.New("dblock: permit wait recheck")
)

// checkPermits checks lc's Permits against the call's keys and options.
func (l *Locker) checkPermits(lc lockConfig, keys []Key) error {
	switch {
	case len(keys) > 1:
		return errPermitsMulti
	case lc.anyShared() || lc.fencing || lc.minInterval > 0:
		return errPermitsMode
	case l.touch:
		return errPermitsMultiWriter
	}
	return nil
}

// heldKey returns how the scope records key taken with lc: a permit
// under the permit table's name, so that a key's permit and its lock are
// held apart.
func (l *Locker) heldKey(key Key, lc *lockConfig) heldKey {
	if lc.permits > 0 {
		return heldKey{l.q.permitName, key}
	}
	return heldKey{l.cfg.table, key}
}

// semaphore is a key's permits: the ids of its permit rows, by slot.
type semaphore struct {
	slots []int64
}

// permitSlots returns the ids of key's n permit rows, creating them in
// autocommit on the side pool when missing. Slot 0, inserted first, holds
// the key's n: a call asking for another fails with ErrPermits.
func (l *Locker) permitSlots(ctx context.Context, key Key, n int) ([]int64, error) {
	if s, ok := l.permitCache.get(key); ok && len(s.slots) == n {
		return s.slots, nil
	} else if ok {
		return nil, l.permitsMismatch(key, len(s.slots), n)
	}
	h := key.hash()
	slots, have, spacer, err := l.readSlots(ctx, h[:])
	if err == nil && have == 0 {
		// Slot 0 first: whoever inserts it decides n.
		if _, err = l.side.ExecContext(ctx, l.q.insertPermits(1), h[:], 0, n); err == nil {
			slots, have, spacer, err = l.readSlots(ctx, h[:])
		}
	}
	if err == nil && have == n && (len(slots) < n || !spacer) {
		// Slots 1 to n-1, then a spacer (slot n, no permit) after them: a
		// waiter's read that skips the key's held permits locks the gap
		// after the last one (SKIP LOCKED under REPEATABLE READ), and the
		// spacer keeps that gap short of the table's end, where the next
		// semaphore's rows go (TestReview25PermitWaitBlocksNewSemaphores).
		args := make([]any, 0, 3*n)
		for i := 1; i < n; i++ {
			args = append(args, h[:], i, n)
		}
		args = append(args, h[:], n, 0)
		if _, err = l.side.ExecContext(ctx, l.q.insertPermits(n), args...); err == nil {
			slots, have, _, err = l.readSlots(ctx, h[:])
		}
	}
	switch {
	case mysqlErrorNumber(err) == erLockWaitTimeout:
		return nil, fmt.Errorf("%w: creating the permits of %s waited for a lock on the permit table: a transaction that waited for another "+
			"semaphore's permit holds the gap at the table's end until it ends (SKIP LOCKED under REPEATABLE READ); try again: %w", ErrNotAcquired, key, err)
	case mysqlErrorNumber(err) == erNoSuchTable:
		return nil, fmt.Errorf("%w: the permit table %s is missing (run the migrations: txlock migrate up): %w", ErrTableMissing, l.q.permitName, err)
	case err != nil:
		return nil, fmt.Errorf("dblock: the permits of %s: %w", key, withCause(ctx, err))
	case have != n:
		return nil, l.permitsMismatch(key, have, n)
	case len(slots) != n:
		return nil, fmt.Errorf("dblock: the permits of %s: %d of %d permit rows found", key, len(slots), n)
	}
	l.permitCache.put(key, &semaphore{slots: slots})
	return slots, nil
}

// readSlots reads the permit rows of hash: their ids by slot (the slots
// below the key's n that exist, in order), the key's n (slot 0's permits;
// 0 when the key has no slot 0 yet), and whether its spacer (slot n)
// exists.
func (l *Locker) readSlots(ctx context.Context, hash []byte) (slots []int64, n int, spacer bool, err error) {
	rows, err := l.side.QueryContext(ctx, l.q.selectPermits, hash)
	if err != nil {
		return nil, 0, false, err
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var slot, permits int
		if err := rows.Scan(&id, &slot, &permits); err != nil {
			return nil, 0, false, err
		}
		if slot == 0 {
			n = permits
		}
		switch {
		case slot == len(slots) && (n == 0 || slot < n):
			slots = append(slots, id)
		case n > 0 && slot == n:
			spacer = true
		}
	}
	return slots, n, spacer, rows.Err()
}

func (l *Locker) permitsMismatch(key Key, have, want int) error {
	return fmt.Errorf("%w: %s is a semaphore of %d permits (set by its first user), this call asks for %d: every user of a key must pass the same n",
		ErrPermits, key, have, want)
}

// lockPermit takes one of the permits (slots) of key in the transaction on
// tx: any free one at once, else it queues for one, in turn, and looks
// again every permitRecheck until granted or out of time.
func (a *acquisition) lockPermit(tx stmtRunner, key Key, slots []int64, session bool, leaseEnd time.Time, holdsOthers bool) (lockOutcome, error) {
	for {
		out, err := a.lockKey(tx, key, lockTarget{ids: slots, permit: true, any: true}, session, leaseEnd, holdsOthers)
		if err == nil {
			a.permitID = out.id
		}
		if errors.Is(err, errRowGone) {
			a.l.permitCache.clear()
			return out, fmt.Errorf("dblock: the permits of %s vanished (the permit table %s was emptied or recreated): try again", key, a.l.q.permitName)
		}
		if !errors.Is(err, errPermitsBusy) {
			return out, err
		}
		turn, err := a.l.bumpCounter(a.ctx, "queueing for a permit of", key, queueHash(key))
		if err != nil {
			return out, err
		}
		slot := slots[int(turn%int64(len(slots)))]
		out, err = a.lockKey(tx, key, lockTarget{ids: []int64{slot}, permit: true, recheck: permitRecheck}, session, leaseEnd, holdsOthers)
		if err == nil {
			a.permitID = out.id
		}
		if errors.Is(err, errRowGone) {
			a.l.permitCache.clear()
			return out, fmt.Errorf("dblock: the permits of %s vanished (the permit table %s was emptied or recreated): try again", key, a.l.q.permitName)
		}
		if errors.Is(err, ErrNotAcquired) && !errors.Is(err, ErrLockLost) && a.ctx.Err() == nil {
			// The wait's bound ran out on this permit: another may have
			// been released meanwhile. One last look, without waiting.
			last, lerr := a.lockKey(tx, key, lockTarget{ids: slots, permit: true, any: true}, session, leaseEnd, holdsOthers)
			if lerr == nil {
				a.permitID = last.id
				return last, nil
			}
			if !errors.Is(lerr, errPermitsBusy) {
				return last, lerr
			}
			return out, err
		}
		if !errors.Is(err, errRecheck) {
			return out, err
		}
	}
}

// queueHash is the fence-table counter that hands out the turns of key's
// waiters (a hash no key has: keys hash their canonical encoding).
func queueHash(key Key) []byte {
	h := key.hash()
	q := sha256.Sum256(append([]byte("txlock permit queue\x00"), h[:]...))
	return q[:]
}

// permitQueries are the statements of the permit table.
func permitQueries(table string) (name, selectPermits, insertPermit string) {
	return table, "SELECT id, slot, permits FROM `" + table + "` WHERE key_hash = ? ORDER BY slot",
		"INSERT IGNORE INTO `" + table + "` (key_hash, slot, permits) VALUES "
}

// insertPermits returns the insert of n permit rows.
func (q *queries) insertPermits(n int) string {
	return q.insertPermit + strings.Repeat("(?, ?, ?), ", n-1) + "(?, ?, ?)"
}

// permitsExist reports whether any of the permit rows ids of hash exists.
func (l *Locker) permitsExist(ctx context.Context, ids []int64, hash []byte) (bool, error) {
	var b strings.Builder
	b.WriteString("SELECT 1 FROM `" + l.q.permitName + "` WHERE key_hash = ? AND id IN (")
	for i, id := range ids {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.FormatInt(id, 10))
	}
	b.WriteString(") LIMIT 1")
	var one int
	err := l.side.QueryRowContext(ctx, b.String(), hash).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}
