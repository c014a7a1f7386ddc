package main

import "fmt"

// cacheNote is printed with every MariaDB table snapshot.
const cacheNote = "MariaDB's information_schema INNODB_TRX, INNODB_LOCKS and INNODB_LOCK_WAITS are a cache refreshed at most every 100 ms, and only after 100 ms without reads: " +
	"this view is at least that old, and stale for as long as other clients read those views more often than every 100 ms (PROCESSLIST is live)"

// unnamedNotes are what the notes say of the keys whose holders or
// waiters MariaDB cannot name.
var (
	unnamedSharedNote = `holder "?" in mode S: the key is held shared by transactions that have written nothing, which MariaDB's lock views give the id 0 that every such transaction shares: ` +
		`they cannot be named, not even with --identify, and release refuses the key; they are among the candidates (open transactions holding row locks)`
	unnamedWaitingNote = `waiter "?" in mode S: shared requests of transactions that have written nothing wait for the key (MariaDB gives all of them the id 0: not named)`
)

// unknowns are what a snapshot's keys show that nobody could name.
type unknowns struct {
	holder         bool // a key's holder is "?", its mode unknown or exclusive, or a semaphore's permit holder is
	unnamedShared  bool // a key is held shared by unnamed transactions
	unnamedWaiting bool // unnamed shared requests wait for a key
}

// unknownsOf returns what keys show that nobody could name.
func unknownsOf(keys []HeldKey) unknowns {
	var u unknowns
	for _, k := range keys {
		if k.Mode == semMode {
			u.holder = u.holder || len(k.Holders) < k.PermitsHeld
		} else {
			u.holder = u.holder || len(k.Holders) == 0 && !k.UnnamedShared
		}
		u.unnamedShared = u.unnamedShared || k.UnnamedShared
		u.unnamedWaiting = u.unnamedWaiting || k.UnnamedWaiting
	}
	return u
}

// notes says what a snapshot leaves out or cannot name: fresh reports
// whether the cache fill was made after the snapshot began, left how many
// of its entries were left out, u what its keys show that nobody could
// name, and named what --identify found.
func (in *inspector) notes(fresh bool, left int, u unknowns, named identified) []string {
	if !in.srv.MariaDB {
		if left > 0 {
			return []string{fmt.Sprintf("%d lock entr(y/ies) left out: their connection ended meanwhile", left)}
		}
		return nil
	}
	notes := []string{cacheNote}
	if !fresh {
		notes = append(notes, fmt.Sprintf("the INNODB_* cache was not refreshed within %v of this snapshot's start (other clients read it more often than every 100 ms), so it may show holders that have released since: its %d entr(y/ies) are left out, and no holder, waiter or candidate is named from it (held keys come from the probe, holder \"?\")", cacheFreshWait, left))
	} else if left > 0 {
		notes = append(notes, fmt.Sprintf("%d entr(y/ies) of the INNODB_* cache left out: PROCESSLIST shows the connection gone, no longer waiting, or (a holder) running statements since this snapshot began, so it may have released", left))
	}
	if u.unnamedShared {
		notes = append(notes, unnamedSharedNote)
	}
	if u.unnamedWaiting {
		notes = append(notes, unnamedWaitingNote)
	}
	unknownHolder := u.holder
	switch {
	case !in.probe:
		notes = append(notes, "without --probe, a held key that nobody waits for is not shown: MariaDB's INNODB_LOCKS lists only locks that someone waits for")
	case unknownHolder && !in.identify:
		notes = append(notes, `holder "?": the key is held (the SKIP LOCKED probe skipped its row) but its holder is not in INNODB_LOCKS (nobody waits for it) or not proven to hold it still; --identify names it (by waiting behind it for a moment)`)
	case unknownHolder && named.staleCache:
		notes = append(notes, `holder "?": --identify queued behind the holder but never appeared in INNODB_TRX: the INNODB_* cache was not refreshed for 1 s, so other clients read it more often than every 100 ms`)
	case unknownHolder && named.moved > 0:
		notes = append(notes, fmt.Sprintf(`holder "?": %d holder(s) that --identify named ran statements right after, so may have released: not named`, named.moved))
	case unknownHolder:
		notes = append(notes, `holder "?": --identify did not see the holder within 1 s (it may have released meanwhile)`)
	}
	return notes
}
