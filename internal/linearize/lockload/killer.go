package lockload

import (
	"context"
	"database/sql"
	"errors"
	"math/rand/v2"
	"strconv"
	"time"
)

// A Killer ends lock holders' sessions from outside, with KILL CONNECTION
// from its own connection, the way an operator, a proxy or a failing
// network would: holders found in PROCESSLIST running a hold statement
// tagged Tag, and, preferably, connections that ran one and are now
// running COMMIT (a commit in flight: its outcome is unknown to the
// client), each half of the time.
type Killer struct {
	Admin *sql.DB // root (PROCESS and CONNECTION ADMIN) on the server
	Tag   string  // the workers' Tag
	Every [2]time.Duration
	Rng   *rand.Rand
}

// KillStats counts what a Killer did.
type KillStats struct {
	Holders int // sessions killed inside a hold statement
	Commits int // sessions killed while running COMMIT
	Missed  int // rounds that found no target
	Errors  int // KILL or PROCESSLIST failures (the session had ended, say)
}

// Run kills a session every Every (a random pause in the range) until
// stop or ctx ends.
func (k *Killer) Run(ctx context.Context, stop time.Time) KillStats {
	var st KillStats
	conn, err := k.Admin.Conn(ctx)
	if err != nil {
		st.Errors++
		return st
	}
	defer conn.Close()
	ours := make(map[int64]bool) // sessions seen in a hold statement
	for {
		pause := between(k.Rng, k.Every)
		if time.Until(stop) < pause {
			return st
		}
		select {
		case <-ctx.Done():
			return st
		case <-time.After(pause):
		}
		k.round(ctx, conn, ours, &st)
	}
}

// round kills one session: it polls PROCESSLIST for up to about 50 ms for
// a target of the kind it drew (a holder in a hold statement, or a COMMIT
// in flight of a session seen holding), then takes any target found.
func (k *Killer) round(ctx context.Context, conn *sql.Conn, ours map[int64]bool, st *KillStats) {
	pattern := "%/*" + k.Tag + "*/%"
	wantCommit := k.Rng.IntN(2) == 0
	var holders, commits []int64
	for try := 0; try < 25; try++ {
		rows, err := conn.QueryContext(ctx, "SELECT ID, COALESCE(INFO, '') FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND (INFO LIKE ? OR INFO = 'COMMIT')", pattern)
		if err != nil {
			st.Errors++
			return
		}
		holders, commits = holders[:0], commits[:0]
		for rows.Next() {
			var id int64
			var info string
			if err := rows.Scan(&id, &info); err != nil {
				break
			}
			switch {
			case info != "COMMIT":
				ours[id] = true
				holders = append(holders, id)
			case ours[id]:
				commits = append(commits, id)
			}
		}
		_ = rows.Close()
		if wantCommit && len(commits) > 0 || !wantCommit && len(holders) > 0 {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	switch {
	case len(commits) > 0 && (wantCommit || len(holders) == 0):
		if k.kill(ctx, conn, commits[k.Rng.IntN(len(commits))], st) {
			st.Commits++
		}
	case len(holders) > 0:
		if k.kill(ctx, conn, holders[k.Rng.IntN(len(holders))], st) {
			st.Holders++
		}
	default:
		st.Missed++
	}
}

func (k *Killer) kill(ctx context.Context, conn *sql.Conn, id int64, st *KillStats) bool {
	if _, err := conn.ExecContext(ctx, "KILL CONNECTION "+strconv.FormatInt(id, 10)); err != nil {
		if !errors.Is(err, context.Canceled) {
			st.Errors++ // 1094 unknown thread: it ended meanwhile
		}
		return false
	}
	return true
}
