package dblock_test

// Several campaigners and observers: each observer sees every leader once
// and in order, never two leaders overlap (in the process, and in server
// time), and the hand-off from one leader to the next is measured with
// and without observers.

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/lockkey"
	"github.com/txlock/txlock/schema"
)

// term is one leadership as the test saw it.
type term struct {
	value      string
	token      int64
	since, end time.Time // server time (UTC): the row's since, UTC_TIMESTAMP(6) just before Resign
	won, quit  time.Time // client time: Campaign returned, Resign called
}

// leaderSince reads the since and token of the election's leader row on
// db (committed, autocommit).
func leaderSince(ctx context.Context, db *sql.DB, table string, key dblock.Key) (time.Time, int64, error) {
	h := lockkey.Fields(key).Hash()
	var since time.Time
	var token int64
	err := db.QueryRowContext(ctx, "SELECT since, token FROM `"+schema.LeaderTable(table)+"` WHERE key_hash = ?", h[:]).Scan(&since, &token)
	return since, token, err
}

// electionRun is one run of campaigners and observers.
type electionRun struct {
	terms    []term
	observed [][]string
	// after are the leaders that won once the run was over and resigned at
	// once, in the order they won: observers may see them or not.
	after []string
}

// runElection has campaigners campaign until terms leaderships have been
// won; each leader waits until every observer has seen it, then resigns.
func runElection(t *testing.T, e env, key dblock.Key, campaigners, observers, terms int) electionRun {
	t.Helper()
	ctx := ctxT(t)
	var (
		mu       sync.Mutex
		run      electionRun
		leading  atomic.Int32
		seen     = make([]map[string]bool, observers)
		wg       sync.WaitGroup
		obsWG    sync.WaitGroup
		finished = make(chan struct{})
	)
	run.observed = make([][]string, observers)
	octx, stopObservers := context.WithCancel(ctx)
	lockers := make([]*dblock.Locker, campaigners)
	for i := range lockers {
		lockers[i] = e.locker(t)
		t.Cleanup(func() { _ = lockers[i].Close() })
	}
	for o := range observers {
		seen[o] = map[string]bool{}
		ch := lockers[o%campaigners].Election(key).Observe(octx)
		obsWG.Add(1)
		go func() {
			defer obsWG.Done()
			for v := range ch {
				mu.Lock()
				run.observed[o] = append(run.observed[o], v)
				seen[o][v] = true
				mu.Unlock()
			}
		}()
	}
	allSeen := func(v string) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range seen {
			if !s[v] {
				return false
			}
		}
		return true
	}
	var won atomic.Int32
	for i := range campaigners {
		el := lockers[i].Election(key)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				ld, err := el.Campaign(ctx, fmt.Sprintf("c%d-%d", i, n))
				if err != nil {
					select {
					case <-finished:
					default:
						t.Errorf("campaigner %d: %v", i, err)
					}
					return
				}
				select {
				case <-finished: // the run is over: hand on to the others waiting
					mu.Lock()
					run.after = append(run.after, fmt.Sprintf("c%d-%d", i, n))
					mu.Unlock()
					_ = ld.Resign(ctx)
					return
				default:
				}
				tm := term{value: fmt.Sprintf("c%d-%d", i, n), token: ld.Token(), won: time.Now()}
				if c := leading.Add(1); c != 1 {
					t.Errorf("%d leaders at once", c)
				}
				var tok int64
				tm.since, tok, err = leaderSince(ctx, e.sqlDB, e.table, key)
				if err != nil || tok != tm.token {
					t.Errorf("the leader row of %s: token %d, %v; want %d", tm.value, tok, err, tm.token)
				}
				for deadline := time.Now().Add(opTimeout); !allSeen(tm.value); time.Sleep(time.Millisecond) {
					if time.Now().After(deadline) {
						t.Errorf("the observers did not all see %s within %v", tm.value, opTimeout)
						break
					}
				}
				if err := e.sqlDB.QueryRowContext(ctx, "SELECT UTC_TIMESTAMP(6)").Scan(&tm.end); err != nil {
					t.Error(err)
				}
				last := won.Add(1) == int32(terms)
				leading.Add(-1)
				tm.quit = time.Now()
				mu.Lock()
				run.terms = append(run.terms, tm)
				mu.Unlock()
				if last {
					close(finished)
				}
				if err := ld.Resign(ctx); err != nil {
					t.Errorf("Resign: %v", err)
				}
				if last {
					return
				}
			}
		}()
	}
	<-finished
	wg.Wait() // each campaigner still waiting wins in turn, sees finished and resigns
	stopObservers()
	obsWG.Wait()
	slices.SortFunc(run.terms, func(a, b term) int { return int(a.token - b.token) })
	return run
}

// isSubsequence reports whether sub is in all, in order.
func isSubsequence(sub, all []string) bool {
	for _, v := range all {
		if len(sub) > 0 && sub[0] == v {
			sub = sub[1:]
		}
	}
	return len(sub) == 0
}

// checkTerms checks that leaderships follow each other in server time and
// in token order, and returns the hand-offs (Resign to the next win).
func checkTerms(t *testing.T, terms []term) []time.Duration {
	t.Helper()
	var handoffs []time.Duration
	for i := 1; i < len(terms); i++ {
		p, n := terms[i-1], terms[i]
		if n.since.Before(p.end) {
			t.Errorf("%s (token %d) began at %v, before %s (token %d) resigned at %v: two leaders in server time",
				n.value, n.token, n.since.Format("15:04:05.000000"), p.value, p.token, p.end.Format("15:04:05.000000"))
		}
		handoffs = append(handoffs, n.won.Sub(p.quit))
	}
	return handoffs
}

func TestElectionObserversSeeEveryChange(t *testing.T) {
	e := setup(t)
	key := dblock.Resource("election:observed")
	terms := 12
	if os.Getenv("TXLOCK_TORTURE") != "" {
		terms = 200
	}
	bare := runElection(t, e, key, 3, 0, terms)
	observed := runElection(t, e, key, 3, 3, terms)
	h0, h3 := checkTerms(t, bare.terms), checkTerms(t, observed.terms)
	var want []string
	for _, tm := range observed.terms {
		want = append(want, tm.value)
	}
	for o, got := range observed.observed {
		if len(got) < len(want) || !slices.Equal(got[:len(want)], want) || !isSubsequence(got[len(want):], observed.after) {
			t.Errorf("observer %d saw %v, want every leader once, in token order: %v (then some of %v, in order)", o, got, want, observed.after)
		}
	}
	t.Logf("hand-off (Resign to the next leader's Campaign return), %d terms, 3 campaigners: median %v without observers, %v with 3 observers",
		terms, median(h0).Round(10*time.Microsecond), median(h3).Round(10*time.Microsecond))
	t.Logf("without observers: %v", roundMs(h0))
	t.Logf("with 3 observers:  %v", roundMs(h3))
}
