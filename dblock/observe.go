package dblock

import (
	"context"
	"time"
)

// Observing an election polls the live leader's row (one primary-key read
// on the side pool, autocommit, no locks: docs/ELECTION.md, "Observe").
// Waiting on the named lock instead would make the observer a leader for
// as long as it held it; no server statement waits for a named lock's
// release without taking it.

// The poll: from observePollMin after a change, doubling up to
// observePollMax while nothing changes. Just after a leader ends the next
// one is usually between its grant and its write: it is seen within
// milliseconds.
const (
	observePollMin = 2 * time.Millisecond
	observePollMax = 100 * time.Millisecond
)

// observeErrorPause is the pause after a failed read before the next one.
const observeErrorPause = time.Second

// Observe returns a channel that delivers the value of each new leader of
// the election, in the order they led, once each: the current leader
// first, if any. A leader that led and ended between two reads may be
// missed, the latest one never is (etcd's Observe semantics). The channel
// is unbuffered and closed when ctx ends (or at once, for invalid input or
// a closed Locker). It polls the leader's row on the side pool: every
// 2 ms after a change, backing off to every 100 ms.
func (e *Election) Observe(ctx context.Context) <-chan string {
	ch := make(chan string)
	if err := e.check(ctx); err != nil {
		if e != nil && e.l != nil {
			e.l.log.Warn("dblock: Observe refused", "error", err)
		}
		close(ch)
		return ch
	}
	go e.observe(ctx, ch)
	return ch
}

// observe is the observer's loop.
func (e *Election) observe(ctx context.Context, ch chan<- string) {
	defer close(ch)
	var last int64 // the token of the last leader delivered
	led := false   // the last read found a live leader
	poll := observePollMin
	for ctx.Err() == nil && !e.l.closed.Load() {
		r, err := e.readLeader(ctx)
		pause := poll
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			e.l.log.Warn("dblock: observing an election failed, reading again", "granularity", e.key.granularity(), "error", err)
			pause = observeErrorPause
		case r.ok && r.token != last:
			// A live row is the current leader's (a dead one no longer
			// matches): a token not delivered yet is a new leader.
			select {
			case ch <- r.value:
				last = r.token
			case <-ctx.Done():
				return
			}
			led, poll = true, observePollMin
			continue
		case led != r.ok:
			// A leader ended (its successor, if one waits, follows within
			// milliseconds), or a stale one is seen: look again soon.
			led, poll = r.ok, observePollMin
		}
		if sleepCtx(ctx, pause) != nil {
			return
		}
		poll = min(2*poll, observePollMax)
	}
}
