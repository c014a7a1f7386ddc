package dblock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
)

// fenceAttempts bounds the bumps bumpToken tries when the server refuses
// one as a deadlock (1213).
const fenceAttempts = 8

// takeTokens takes a fencing token for each of keys, which the transaction
// on tx holds: it bumps each key's counter in autocommit on the side pool,
// then reads the counters back in the transaction with a locking read.
// That read proves the transaction (and so its locks) was still alive
// after the bumps, so a token is never handed out for a lock that may
// already be someone else's (a holder paused between its grant and its
// bump). On MariaDB the read also runs with innodb_snapshot_isolation:
// when the transaction read before these locks (its snapshot predates the
// bumps), it fails with 1020 and the server rolls the transaction back
// (ErrStaleSnapshot): with check, for keys just locked (a key the
// transaction held before its reads needs no check).
func (l *Locker) takeTokens(ctx context.Context, tx stmtRunner, keys []Key, holdsOthers, check bool) ([]int64, error) {
	tokens := make([]int64, len(keys))
	var held []Key // keys whose counter this very transaction holds already
	for i, k := range keys {
		t, err := l.bumpToken(ctx, k)
		if mysqlErrorNumber(err) == erLockWaitTimeout {
			// Another transaction holds the counter's row: a successor
			// that got the key because this transaction is gone, or this
			// transaction itself, which read the counter when it took the
			// key through another Locker or context.
			if _, perr := tx.ExecContext(ctx, pingStmt); perr != nil {
				return nil, fmt.Errorf("%w: %s: the transaction ended before its fencing token was taken, and another holder has the key: %w", ErrLockLost, k, perr)
			}
			held = append(held, k)
			continue
		}
		if err != nil {
			return nil, err
		}
		tokens[i] = t
	}
	seen, err := l.readTokens(ctx, tx, keys, tokens, held, holdsOthers, check)
	if err != nil {
		return nil, err
	}
	if seen != len(keys) {
		return nil, fmt.Errorf("dblock: fencing tokens of %s: the transaction sees %d of %d counters", keys[0], seen, len(keys))
	}
	return tokens, nil
}

// readTokens reads the counters of keys back in the transaction into
// tokens: the keys it bumped with the stale-snapshot check when check is
// set, the keys of held without (the transaction held them before), and
// returns how many counters it saw.
func (l *Locker) readTokens(ctx context.Context, tx stmtRunner, keys []Key, tokens []int64, held []Key, holdsOthers, check bool) (int, error) {
	var bumped []Key
	var bumpedTokens []int64
	for i, k := range keys {
		if !slices.Contains(held, k) {
			bumped, bumpedTokens = append(bumped, k), append(bumpedTokens, tokens[i])
		}
	}
	seen := 0
	for _, part := range [...]struct {
		keys   []Key
		tokens []int64
		check  bool
	}{{bumped, bumpedTokens, check}, {held, make([]int64, len(held)), false}} {
		if len(part.keys) == 0 {
			continue
		}
		n, err := l.readCounters(ctx, tx, part.keys, part.tokens, part.check, holdsOthers)
		if err != nil {
			return 0, err
		}
		seen += n
		for j, k := range part.keys {
			tokens[slices.Index(keys, k)] = part.tokens[j]
		}
	}
	return seen, nil
}

// readCounters reads keys' counters in the transaction with one locking
// read (see takeTokens). A bumped value (tokens[i] > 0) is a floor the
// counter must not be below; a zero takes the value read: the
// transaction's own token, from when it took the key.
func (l *Locker) readCounters(ctx context.Context, tx stmtRunner, keys []Key, tokens []int64, check, holdsOthers bool) (int, error) {
	prefix := l.q.readFence
	if check {
		prefix = l.q.checkFence
	}
	hashes := make([][]byte, len(keys))
	for i, k := range keys {
		h := k.hash()
		hashes[i] = h[:]
	}
	return l.scanCounters(ctx, tx, prefix, keys, hashes, true, holdsOthers, func(i int, token int64) error {
		switch {
		case tokens[i] == 0:
			tokens[i] = token
		case token < tokens[i]:
			return fmt.Errorf("dblock: fencing token of %s: the transaction reads %d after the bump to %d", keys[i], token, tokens[i])
		}
		return nil
	})
}

// scanCounters reads the fence-table counters of hashes (those of keys:
// their tokens, or their semaphores' queues) in the transaction on tx,
// with a locking read when lock is set, and calls visit with each
// counter's index and value. It returns how many counters it saw.
func (l *Locker) scanCounters(ctx context.Context, tx stmtRunner, prefix string, keys []Key, hashes [][]byte, lock, holdsOthers bool, visit func(i int, token int64) error) (int, error) {
	var buf [512]byte
	q := string(appendFenceRead(buf[:0], prefix, hashes, lock))
	rows, err := tx.QueryContext(ctx, q)
	if err != nil {
		return 0, l.tokenReadError(keys[0], err, holdsOthers)
	}
	defer rows.Close()
	seen := 0
	for rows.Next() {
		var hash []byte
		var token int64
		if err := rows.Scan(&hash, &token); err != nil {
			noteErr(tx, err)
			return 0, l.tokenReadError(keys[0], err, holdsOthers)
		}
		for i := range hashes {
			if bytes.Equal(hash, hashes[i]) {
				if err := visit(i, token); err != nil {
					return 0, err
				}
				seen++
			}
		}
	}
	if err := rows.Err(); err != nil {
		// The server sends the columns before it reads the rows: a 1020
		// (or a deadlock) arrives here, after the call returned.
		noteErr(tx, err)
		return 0, l.tokenReadError(keys[0], err, holdsOthers)
	}
	return seen, nil
}

// tokenReadError maps an error of the read that confirms tokens.
func (l *Locker) tokenReadError(key Key, err error, holdsOthers bool) error {
	lost := ""
	if holdsOthers {
		lost = ", and the locks it held are gone"
	}
	switch {
	case mysqlErrorNumber(err) == erCheckRead:
		return fmt.Errorf("%w: %s: the transaction had read before this lock, so its reads may predate the previous holder's commit; the transaction was rolled back by the server%s: %w",
			ErrStaleSnapshot, key, lost, l.lostIf(holdsOthers, err))
	case l.endsTransaction(err):
		return fmt.Errorf("%w: %s: the transaction ended while taking its fencing token: %w", ErrLockLost, key, err)
	}
	return fmt.Errorf("dblock: reading the fencing token of %s: %w", key, err)
}

// lostIf returns err, wrapped with ErrLockLost when the transaction held
// other locks.
func (l *Locker) lostIf(holdsOthers bool, err error) error {
	if holdsOthers && !errors.Is(err, ErrLockLost) {
		return fmt.Errorf("%w: %w", ErrLockLost, err)
	}
	return err
}

// bumpToken bumps and returns key's fencing counter in autocommit. The
// caller holds the key's lock, so on a single server no other holder bumps
// it concurrently. On a Galera multi-writer cluster, holders on different
// nodes may (row locks are node-local): their bumps then conflict, the
// loser gets 1213 and the bump is sent again, up to fenceAttempts times.
func (l *Locker) bumpToken(ctx context.Context, key Key) (int64, error) {
	h := key.hash()
	return l.bumpCounter(ctx, "taking the fencing token of", key, h[:])
}

// bumpCounter bumps and returns the fence-table counter of hash, for key:
// its fencing token (bumpToken) or the turn of its semaphore's waiters;
// step names the purpose in errors.
func (l *Locker) bumpCounter(ctx context.Context, step string, key Key, hash []byte) (int64, error) {
	for n := 1; ; n++ {
		res, err := l.side.ExecContext(ctx, l.q.bumpFence, hash)
		if err == nil {
			token, err := res.LastInsertId()
			if err != nil || token <= 0 {
				return 0, fmt.Errorf("dblock: %s %s: server returned %d: %v", step, key, token, err)
			}
			return token, nil
		}
		if e := l.notPrimary(step, key, err); e != nil {
			return 0, e
		}
		switch mysqlErrorNumber(err) {
		case erNoSuchTable:
			return 0, fmt.Errorf("%w: %w", ErrTableMissing, err)
		case erLockWaitTimeout:
			return 0, err // takeTokens tells whose lock it is
		}
		if isBrokenConn(err) && n == 1 {
			continue // a side connection that died while idle: once more on another
		}
		if mysqlErrorNumber(err) != erLockDeadlock {
			return 0, fmt.Errorf("dblock: %s %s: %w", step, key, withCause(ctx, err))
		}
		if n == fenceAttempts {
			// Every bump was refused (another holder bumping the counter:
			// Galera multi-writer). A transaction the Locker opened is rolled
			// back whole, so running it again is safe: Retry does.
			return 0, fmt.Errorf("%w: %s %s: %d bumps refused as deadlocks (another holder bumping it: Galera multi-writer?): %w", ErrDeadlock, step, key, n, err)
		}
		l.log.DebugContext(ctx, "dblock: fencing token bump refused as a deadlock, retrying", "granularity", key.granularity(), "attempt", n)
		if serr := sleepCtx(ctx, fenceBackoff.pause(n)); serr != nil {
			return 0, fmt.Errorf("dblock: %s %s: %d bump(s) refused as deadlocks, retry abandoned: %w (%w)", step, key, n, serr, err)
		}
	}
}

// TokenFrom returns the fencing token of key that the transaction ctx
// carries took (Do's fn context, with the Fencing option), and whether
// there is one.
func TokenFrom(ctx context.Context, key Key) (int64, bool) {
	for link := linkFrom(ctx); link != nil; link = link.next {
		st := link.s.st.Load()
		st.mu.Lock()
		for hk, t := range st.tokens {
			if hk.key == key {
				st.mu.Unlock()
				return t, true
			}
		}
		st.mu.Unlock()
	}
	return 0, false
}
