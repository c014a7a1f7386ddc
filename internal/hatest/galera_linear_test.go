package hatest_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/hatest"
	"github.com/txlock/txlock/internal/linearize"
	"github.com/txlock/txlock/internal/linearize/lockload"
	"github.com/txlock/txlock/migrations"
)

// envGaleraLinear overrides how long each configuration of
// TestGaleraLinearizable runs (a Go duration; 20 s by default).
const envGaleraLinear = "TXLOCK_HA_LINEAR_DURATION"

// galeraLinearWorkers is the number of goroutines of each configuration.
const galeraLinearWorkers = 9

// galeraLinearMix is the workload: every path (or those a configuration
// names), a few NoWait and wait timeouts, holds of up to 2 ms between the
// read and the write, no deadline but a bound.
var galeraLinearMix = lockload.Mix{
	NoWait: 0.05, WaitP: 0.3, Wait: [2]time.Duration{200 * time.Millisecond, time.Second},
	MaxOp: 20 * time.Second, Hold: [2]time.Duration{0, 2 * time.Millisecond},
}

// A galeraLinearConfig is one configuration of TestGaleraLinearizable.
type galeraLinearConfig struct {
	name   string
	spread bool // goroutine g on node g%3, else all on node1
	paths  []lockload.Path
	// text: the pools use the text protocol (interpolateParams=true)
	// rather than go-sql-driver's default, server-side prepared
	// statements.
	text bool
}

// withoutPath returns lockload.AllPaths without p.
func withoutPath(p lockload.Path) []lockload.Path {
	return slices.DeleteFunc(slices.Clone(lockload.AllPaths), func(q lockload.Path) bool { return q == p })
}

// TestGaleraLinearizable (issue 20): is the committed effect of
// read-modify-write increments under a GaleraMultiWriter lock
// linearizable on a 3-node cluster? Nine goroutines increment three
// counters (read n under the lock, write n+1 computed in Go) through
// every public path (Do, Lock and Commit, LockTx in a transaction that
// read the counter before locking, decorator.WithLock, DoMulti), every
// Locker with GaleraMultiWriter, for 20 s per configuration; porcupine
// (package linearize) judges the client-side history, with a
// certification failure (1213, ErrDeadlock) taken as not committed and
// the final counters read on every node after the cluster synced. Each
// configuration must be linearizable:
//
//   - one-node: every goroutine on node1;
//   - three-nodes: goroutines spread over the three nodes;
//   - three-nodes-without-LockTx: the same without the LockTx-after-read
//     path;
//   - the two multi-node ones again over the text protocol
//     (interpolateParams=true) instead of server-side prepared
//     statements.
//
// (Before the fix of issue 20, the multi-node configurations lost
// updates: silent brute-force aborts; see docs/HA.md.) A verdict that is
// not linearizable lists the values read twice, with the nodes and paths
// of the increments involved. First, commit-after-brute-force-abort checks, one
// path at a time, what Commit reports for a holder whose transaction
// another node's holder made the applier abort.
func TestGaleraLinearizable(t *testing.T) {
	hatest.SkipUnlessEnabled(t)
	duration := 20 * time.Second
	if s := os.Getenv(envGaleraLinear); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("%s=%q: want a positive Go duration such as 30s", envGaleraLinear, s)
		}
		duration = d
	}
	g := hatest.StartGalera(t, 3)
	t.Logf("HA-RESULT setup of a 3-node Galera cluster: %v", g.Setup.Round(time.Millisecond))
	ctx := context.Background()
	if _, err := migrations.Up(ctx, g.Nodes[0].Admin()); err != nil {
		t.Fatalf("migrations.Up: %v", err)
	}
	binary := galeraClients(t, g, false, dblock.GaleraMultiWriter())
	text := galeraClients(t, g, true, dblock.GaleraMultiWriter())
	t.Run("commit-after-brute-force-abort", func(t *testing.T) { testCommitAfterAbort(t, binary) })
	for i, c := range []galeraLinearConfig{
		{name: "one-node", paths: lockload.AllPaths},
		{name: "three-nodes", spread: true, paths: lockload.AllPaths},
		{name: "three-nodes-without-LockTx", spread: true, paths: withoutPath(lockload.ReadFirst)},
		{name: "three-nodes-text-protocol", spread: true, paths: lockload.AllPaths, text: true},
		{name: "three-nodes-without-LockTx-text-protocol", spread: true, paths: withoutPath(lockload.ReadFirst), text: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			cl := binary
			if c.text {
				cl = text
			}
			ctrs := lockload.Counters{Table: "ha_lin_" + strconv.Itoa(i), Prefix: "ha-lin-" + strconv.Itoa(i) + ":", N: 3}
			cl.prepare(t, ctrs)
			res, stats := cl.run(t, ctrs, c, duration)
			paths, nodes := res.Involvement()
			t.Logf("HA-RESULT Galera multi-writer linearizability, %s (%v, %d goroutines, paths %v): %s; anomalies by paths %v, by nodes %v",
				c.name, duration, galeraLinearWorkers, c.paths, res.Summary(), paths, nodes)
			t.Logf("outcomes %s", stats)
			if res.Totals().Committed == 0 {
				t.Fatalf("no increment committed")
			}
			if res.Verdict != linearize.Linearizable {
				t.Errorf("issue 20: the committed effect is %s:\n%s", res.Verdict, res.Explain())
			}
		})
	}
}

// testCommitAfterAbort: a holder on node2 takes the key (GaleraMultiWriter:
// the locking read and the touch) and adds 7 to a counter; meanwhile a
// holder on node1 takes the same key (row locks are node-local), adds 1000
// and commits first; node2's applier then aborts node2's holder (brute
// force) while it is idle. The holder's commit must fail (ErrLockLost or
// ErrDeadlock or 1213): its transaction is gone. A nil is a phantom
// commit: the counter shows 1000, not 1007. Per path: Lock and Commit,
// and Do; locks in a caller's transaction are refused in this mode.
func testCommitAfterAbort(t *testing.T, cl *galeraClientSet) {
	ctx := context.Background()
	ctrs := lockload.Counters{Table: "ha_bf_abort", Prefix: "ha-bf-abort:", N: 1}
	cl.prepare(t, ctrs)
	key := ctrs.Key(0)
	add := func(tx *gorm.DB, n int) error {
		return tx.Exec("UPDATE `"+ctrs.Table+"` SET v = v + ? WHERE id = 0", n).Error
	}
	// conflict makes node1's holder commit +1000 and waits until node2 has
	// applied it (which aborts node2's holder).
	conflict := func() error {
		k, err := cl.lockers[0].Lock(ctx, key, dblock.WaitTimeout(5*time.Second))
		if err != nil {
			return fmt.Errorf("node1's holder: %w", err)
		}
		if err := add(k.Tx(), 1000); err != nil {
			_ = k.Rollback()
			return fmt.Errorf("node1's holder: %w", err)
		}
		if err := k.Commit(); err != nil {
			return fmt.Errorf("node1's holder's commit: %w", err)
		}
		_, err = syncedFinal(ctx, cl.g.Nodes[1], ctrs)
		return err
	}
	n2l, n2db := cl.lockers[1], cl.dbs[1]
	for _, c := range []struct {
		path string
		run  func() error // node2's holder; returns its commit's error
	}{
		{"Lock", func() error {
			k, err := n2l.Lock(ctx, key)
			if err != nil {
				return fmt.Errorf("setup: %w", err)
			}
			if err := add(k.Tx(), 7); err != nil {
				_ = k.Rollback()
				return fmt.Errorf("setup: %w", err)
			}
			if err := conflict(); err != nil {
				_ = k.Rollback()
				return fmt.Errorf("setup: %w", err)
			}
			return k.Commit()
		}},
		{"Do", func() error {
			var setup error
			err := n2l.Do(ctx, key, func(_ context.Context, tx *gorm.DB) error {
				if setup = add(tx, 7); setup == nil {
					setup = conflict()
				}
				return nil // what fn would do: its statements succeeded
			})
			if setup != nil {
				return fmt.Errorf("setup: %w", setup)
			}
			return err
		}},
	} {
		t.Run(c.path, func(t *testing.T) {
			before, err := syncedFinal(ctx, cl.g.Nodes[0], ctrs)
			if err != nil {
				t.Fatal(err)
			}
			commitErr := c.run()
			if commitErr != nil && strings.HasPrefix(commitErr.Error(), "setup: ") {
				t.Fatal(commitErr)
			}
			after, err := syncedFinal(ctx, cl.g.Nodes[0], ctrs)
			if err != nil {
				t.Fatal(err)
			}
			delta := after[ctrs.Name(0)] - before[ctrs.Name(0)]
			t.Logf("HA-RESULT commit after a brute-force abort, %s on node2: Commit -> %v; the counter moved by %d (node1 +1000, node2 +7)", c.path, commitErr, delta)
			switch {
			case commitErr == nil && delta == 1000:
				t.Errorf("%s: Commit returned nil, but the transaction had been aborted: its +7 is not in the counter (a phantom commit)", c.path)
			case commitErr == nil:
				t.Errorf("%s: Commit returned nil after the conflicting holder on node1 committed first; the counter moved by %d", c.path, delta)
			case delta != 1000:
				t.Errorf("%s: Commit failed (%v), but the counter moved by %d, want 1000", c.path, commitErr, delta)
			}
		})
	}
	// A caller's own transaction cannot be checked that way: the Locker
	// refuses to lock in one (LockTx, Do under WithTx) in multi-writer mode.
	t.Run("caller-transactions-refused", func(t *testing.T) {
		tx := n2db.WithContext(ctx).Begin()
		defer tx.Rollback()
		if err := n2l.LockTx(ctx, tx, key); err == nil || !strings.Contains(err.Error(), "GaleraMultiWriter") {
			t.Errorf("LockTx in multi-writer mode = %v, want a refusal naming GaleraMultiWriter", err)
		}
		err := n2l.Do(dblock.WithTx(ctx, tx), key, func(context.Context, *gorm.DB) error { return errors.New("fn ran") })
		if err == nil || !strings.Contains(err.Error(), "GaleraMultiWriter") {
			t.Errorf("Do under WithTx in multi-writer mode = %v, want a refusal naming GaleraMultiWriter", err)
		}
	})
}

// galeraClientSet is a pool and a Locker per node.
type galeraClientSet struct {
	g       *hatest.Galera
	dbs     []*gorm.DB
	lockers []*dblock.Locker
}

// galeraClients opens, for the account app, a pool and a Locker with opts
// on every node of g; text selects the text protocol
// (interpolateParams=true).
func galeraClients(t *testing.T, g *hatest.Galera, text bool, opts ...dblock.Option) *galeraClientSet {
	t.Helper()
	cl := &galeraClientSet{g: g}
	for _, n := range g.Nodes {
		dsn := n.DSN("app", "app")
		if text {
			dsn += "&interpolateParams=true"
		}
		db := openGorm(t, dsn)
		cl.dbs = append(cl.dbs, db)
		cl.lockers = append(cl.lockers, newLocker(t, db, opts...))
	}
	return cl
}

// prepare creates the counters and their key rows, and waits until every
// node has them.
func (cl *galeraClientSet) prepare(t *testing.T, ctrs lockload.Counters) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := ctrs.Create(ctx, cl.g.Nodes[0].Admin()); err != nil {
		t.Fatal(err)
	}
	for i := range ctrs.N {
		if err := cl.lockers[0].Do(ctx, ctrs.Key(i), func(context.Context, *gorm.DB) error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range cl.g.Nodes {
		for i := range ctrs.N {
			waitKeyRow(t, n, ctrs.Key(i))
		}
		if _, err := syncedFinal(ctx, n, ctrs); err != nil {
			t.Fatal(err)
		}
	}
}

// run runs the configuration for d and checks its history.
func (cl *galeraClientSet) run(t *testing.T, ctrs lockload.Counters, c galeraLinearConfig, d time.Duration) (linearize.Result, *lockload.Stats) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d+2*time.Minute)
	defer cancel()
	var rec linearize.Recorder
	var stats lockload.Stats
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for gr := range galeraLinearWorkers {
		n := 0
		if c.spread {
			n = gr % len(cl.g.Nodes)
		}
		w := &lockload.Worker{Locker: cl.lockers[n], DB: cl.dbs[n], Counters: ctrs, Client: gr,
			Node: cl.g.Nodes[n].Name, Tag: "ha-lin", Rec: &rec, Stats: &stats, Rng: rand.New(rand.NewPCG(seed, uint64(gr)))}
		mix := galeraLinearMix
		mix.Paths = c.paths
		wg.Go(func() { w.Loop(ctx, stop, mix) })
	}
	wg.Wait()
	var final map[string]int64
	for i, n := range cl.g.Nodes {
		f, err := syncedFinal(ctx, n, ctrs)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			final = f
		} else if !mapsEqual(f, final) {
			t.Errorf("the counters differ between nodes after a causal read: %s %v, %s %v", cl.g.Nodes[0].Name, final, n.Name, f)
		}
	}
	res, err := linearize.Check(linearize.History{Ops: rec.Ops(), Final: final},
		linearize.Options{HTML: linearize.HTMLPath("galera-" + c.name)})
	if err != nil {
		t.Fatal(err)
	}
	return res, &stats
}

// syncedFinal reads the counters on node after waiting for it to apply
// everything the cluster committed (wsrep_sync_wait on an autocommit
// read).
func syncedFinal(ctx context.Context, node *hatest.Node, ctrs lockload.Counters) (map[string]int64, error) {
	conn, err := node.Admin().Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SET SESSION wsrep_sync_wait = 1"); err != nil {
		return nil, err
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), "SET SESSION wsrep_sync_wait = DEFAULT") //nolint:errcheck // the connection goes back to the admin pool
	return ctrs.Final(ctx, conn)
}

func mapsEqual(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
