package hatest_test

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/hatest"
	"github.com/txlock/txlock/internal/history"
	"github.com/txlock/txlock/internal/lockkey"
	"github.com/txlock/txlock/migrations"
	"gorm.io/gorm"
)

// TestGalera: a 3-node cluster. Single-writer: every holder on node1,
// mutual exclusion under load (an in-process overlap detector). Multi-
// writer: holders on node1 and node2 at once both get the row (row locks
// are node-local), and what their commits do is reported; under load on
// all three nodes, with fencing tokens, the history checker finds no
// overlapping committed sections and no token out of order. Then a node
// is isolated from the others (its holder must lose, the majority must
// lock again) and rejoins, and last a node is killed.
func TestGalera(t *testing.T) {
	hatest.SkipUnlessEnabled(t)
	g := hatest.StartGalera(t, 3)
	t.Logf("HA-RESULT setup of a 3-node Galera cluster: %v", g.Setup.Round(time.Millisecond))
	ctx := context.Background()
	if _, err := migrations.Up(ctx, g.Nodes[0].Admin()); err != nil {
		t.Fatalf("migrations.Up: %v", err)
	}
	g.Nodes[0].Exec(t,
		"CREATE TABLE test.ha_business (id INT PRIMARY KEY, v BIGINT NOT NULL)",
		"INSERT INTO test.ha_business VALUES (1, 0)",
	)

	t.Run("single-writer", func(t *testing.T) {
		l := nodeLocker(t, g.Nodes[0], dblock.GaleraSingleWriter())
		key := dblock.Resource("ha:galera-single")
		var inside, overlaps, done atomic.Int64
		var wg sync.WaitGroup
		more := keepGoing(3*time.Second, minSections, &done)
		for range 8 {
			wg.Go(func() {
				for more() {
					err := l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
						if inside.Add(1) != 1 {
							overlaps.Add(1)
						}
						defer inside.Add(-1)
						return tx.Exec("UPDATE ha_business SET v = v + 1 WHERE id = 1").Error
					})
					if err == nil {
						done.Add(1)
					}
				}
			})
		}
		wg.Wait()
		g.WaitApplied(t, g.Nodes[2], hatest.Ceiling)
		v, _ := g.Nodes[2].QueryString(ctx, "SELECT v FROM ha_business WHERE id = 1")
		t.Logf("HA-RESULT Galera single-writer: %d critical sections committed by 8 goroutines on node1 (at least 3 s and %d sections), %d overlaps; v on node3 = %s", done.Load(), minSections, overlaps.Load(), v)
		if overlaps.Load() != 0 {
			t.Errorf("%d overlapping critical sections", overlaps.Load())
		}
		if done.Load() < minSections {
			t.Errorf("only %d critical sections committed within %v: too few to check mutual exclusion", done.Load(), hatest.Ceiling)
		}
	})

	t.Run("multi-writer-two-nodes", func(t *testing.T) {
		key := dblock.Resource("ha:galera-multi")
		var ls []*dblock.Locker
		for _, n := range g.Nodes[:2] {
			ls = append(ls, nodeLocker(t, n, dblock.GaleraMultiWriter()))
		}
		// The key's row first, everywhere.
		if err := ls[0].Do(ctx, key, func(context.Context, *gorm.DB) error { return nil }); err != nil {
			t.Fatal(err)
		}
		waitKeyRow(t, g.Nodes[1], key)
		h1, err := ls[0].Lock(ctx, key, dblock.WaitTimeout(2*time.Second))
		if err != nil {
			t.Fatalf("holder on node1: %v", err)
		}
		defer func() { _ = h1.Rollback() }()
		h2, err := ls[1].Lock(ctx, key, dblock.WaitTimeout(2*time.Second))
		t.Logf("HA-RESULT Galera multi-writer: holder on node2 while node1 holds: %v (nil = both got the row)", err)
		if err != nil {
			return
		}
		defer func() { _ = h2.Rollback() }()
		e1 := h1.Commit()
		e2 := h2.Commit()
		t.Logf("HA-RESULT Galera multi-writer: node1 Commit -> %v; node2 Commit -> %v (ErrLockLost %v)", e1, e2, errors.Is(e2, dblock.ErrLockLost))
		if e1 == nil && e2 == nil {
			t.Errorf("both overlapping holders on different nodes committed")
		}
	})
	t.Run("multi-writer-history", func(t *testing.T) {
		// 3 goroutines per node on one key, each critical section recorded
		// in a history table inside its own transaction: only committed
		// sections leave a row, and none of them may overlap.
		const table = "ha_history"
		if err := history.CreateTable(ctx, g.Nodes[0].Admin(), table); err != nil {
			t.Fatal(err)
		}
		key := dblock.Resource("ha:galera-history")
		var rec history.Recorder
		var firstErr atomic.Pointer[error]
		var tokens sync.Map // token -> node that took it
		var dupTokens atomic.Int64
		var wg sync.WaitGroup
		var refusals countingHandler // token bumps refused and sent again
		var committed atomic.Int64
		loadStart := time.Now()
		more := keepGoing(4*time.Second, minSections, &committed)
		for i, n := range g.Nodes {
			l := nodeLocker(t, n, dblock.GaleraMultiWriter(), dblock.Logger(slog.New(&refusals)))
			for gr := range 3 {
				wg.Go(func() {
					for more() {
						req := time.Now()
						err := l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
							token, ok := dblock.TokenFrom(ctx, key)
							if !ok {
								return errors.New("no fencing token in fn's context")
							}
							if prev, dup := tokens.LoadOrStore(token, i+1); dup {
								dupTokens.Add(1)
								t.Errorf("fencing token %d handed out twice (nodes %d and %d)", token, prev, i+1)
							}
							sec, err := history.Begin(ctx, tx.Statement.ConnPool, table, i+1, gr, key.String(), token, req)
							if err != nil {
								return err
							}
							if err := tx.Exec("UPDATE ha_business SET v = v + 1 WHERE id = 1").Error; err != nil {
								return err
							}
							time.Sleep(time.Millisecond)
							return sec.End(ctx)
						}, dblock.Fencing(), dblock.Retry(1))
						out := history.Committed
						if err == nil {
							committed.Add(1)
						}
						switch {
						case errors.Is(err, dblock.ErrLockLost):
							out = history.Lost
						case errors.Is(err, dblock.ErrDeadlock):
							out = history.RolledBack
						case err != nil:
							out = history.Failed
							firstErr.CompareAndSwap(nil, &err)
						}
						rec.Add(history.Event{Process: i + 1, Goroutine: gr, Key: key.String(), Request: req, Outcome: out})
					}
				})
			}
		}
		wg.Wait()
		loadTook := time.Since(loadStart)
		g.WaitApplied(t, g.Nodes[0], hatest.Ceiling) // the other nodes' last sections are in node1's table
		events, err := history.Load(ctx, g.Nodes[0].Admin(), table)
		if err != nil {
			t.Fatal(err)
		}
		rep := history.Analyze(events)
		handed := 0
		tokens.Range(func(any, any) bool { handed++; return true })
		t.Logf("HA-RESULT Galera multi-writer, 3 nodes x 3 goroutines, %v (at least 4 s and %d committed sections), with fencing tokens: outcomes %v (rolled_back = ErrDeadlock, a local deadlock or a brute-force abort while waiting; lost = ErrLockLost, certification failure at commit); %d committed sections checked, %d violations (overlap or token order); %d tokens handed out, %d handed out twice; %d token bumps refused by certification and sent again",
			loadTook.Round(time.Millisecond), minSections, rec.Count(), rep.Checked, len(rep.Violations), handed, dupTokens.Load(), refusals.count("bump refused"))
		if e := firstErr.Load(); e != nil {
			t.Logf("first other failure: %v", *e)
		}
		if err := rep.Err(); err != nil {
			t.Error(err)
		}
		if rep.Checked < minSections {
			t.Errorf("only %d committed sections in the history (%d committed by the workers) within %v: too few to check", rep.Checked, committed.Load(), hatest.Ceiling)
		}
	})

	t.Run("node-isolation", func(t *testing.T) {
		// A multi-writer holder on node2, then node2 cut off from the
		// others' group communication (gmcast.isolate=1, Galera's own
		// partition switch): node2 leaves the primary component. Its
		// holder must learn that it lost the lock and must not commit;
		// node1 must lock and commit again once node2 is evicted. Then
		// node2 rejoins, for the node-kill test.
		key := dblock.Resource("ha:galera-isolate")
		n1, n2 := g.Nodes[0], g.Nodes[1]
		txlockBin := buildTxlock(t)
		l2 := nodeLocker(t, n2, dblock.GaleraMultiWriter(), dblock.Defaults(dblock.Lease(2*time.Second)))
		l1 := nodeLocker(t, n1, dblock.GaleraMultiWriter())
		if _, err := acquireCommit(ctx, l2, key, hatest.Ceiling); err != nil {
			t.Fatal(err)
		}
		waitKeyRow(t, n1, key)
		const marker = 1_000_000_000 // the isolated holder's write, which must never land
		holder, err := l2.Lock(ctx, key)
		if err != nil {
			t.Fatalf("holder on node2: %v", err)
		}
		defer func() { _ = holder.Rollback() }()
		if err := holder.Tx().Exec("UPDATE ha_business SET v = v + ? WHERE id = 1", marker).Error; err != nil {
			t.Fatalf("holder's write on node2: %v", err)
		}

		isolated := time.Now()
		if _, err := n2.Admin().ExecContext(ctx, "SET GLOBAL wsrep_provider_options = 'gmcast.isolate=1'"); err != nil {
			t.Fatalf("isolating node2: %v", err)
		}
		t.Cleanup(func() {
			// Whatever failed, node-kill needs all three nodes.
			if _, err := n2.Admin().ExecContext(ctx, "SET GLOBAL wsrep_provider_options = 'gmcast.isolate=0'"); err != nil {
				t.Errorf("ending node2's isolation: %v", err)
			}
			hatest.WaitGaleraSize(t, n2, 3, hatest.Ceiling)
		})
		lostCh := lostAfter(holder, isolated, hatest.Ceiling)
		attempts, err := acquireCommit(ctx, l1, key, hatest.Ceiling)
		if err != nil {
			t.Fatalf("acquire-and-commit on node1 after node2's isolation: %v", err)
		}
		majority := time.Since(isolated)
		lost := <-lostCh
		if lost < 0 {
			t.Errorf("holder on the isolated node: Lost() not closed within %v", hatest.Ceiling)
		}
		cerr := holder.Commit()
		if !errors.Is(cerr, dblock.ErrLockLost) {
			t.Errorf("holder's Commit on the isolated node = %v, want ErrLockLost", cerr)
		}
		// A new acquisition on the isolated node must fail, not hand out
		// a lock the majority does not see: of a key whose row the Locker
		// knows (1047 at BEGIN), and of a new key by a new Locker (1047 at
		// the row lookup).
		var aerr error
		for _, c := range []struct {
			l   *dblock.Locker
			key dblock.Key
		}{
			{l2, key},
			{nodeLocker(t, n2, dblock.GaleraMultiWriter()), dblock.Resource("ha:galera-isolate-new")},
		} {
			tctx, cancel := context.WithTimeout(ctx, hatest.Ceiling)
			lk, err := c.l.Lock(tctx, c.key, dblock.WaitTimeout(time.Second))
			cancel()
			if err == nil {
				_ = lk.Rollback()
			}
			if !errors.Is(err, dblock.ErrNotPrimary) {
				t.Errorf("Lock of %s on the isolated node = %v, want ErrNotPrimary", c.key, err)
			}
			aerr = cmp.Or(aerr, err)
		}
		// txlock doctor tells the isolated node from a healthy one.
		out, err := runDoctor(t, txlockBin, n2.DSN("root", ""), "--galera-multi-writer")
		if err == nil || !regexp.MustCompile(`FAIL\s+galera_state\s+wsrep_cluster_status non-Primary`).MatchString(out) {
			t.Errorf("txlock doctor on the isolated node: %v, want exit 1 and galera_state FAIL:\n%s", err, out)
		}
		t.Logf("txlock doctor on the isolated node (%v):\n%s", err, out)
		if out, err := runDoctor(t, txlockBin, n1.DSN("root", ""), "--galera-multi-writer"); err != nil || !regexp.MustCompile(`OK\s+galera_state\s+wsrep_cluster_status Primary`).MatchString(out) {
			t.Errorf("txlock doctor on node1: %v, want exit 0 and galera_state OK:\n%s", err, out)
		}
		t.Logf("HA-RESULT Galera node isolation: isolation→acquire-and-commit on node1 %v (%d attempts); isolated holder's Lost() after %v (Lease 2s), its Commit -> %v; a new Lock on the isolated node -> %v",
			majority.Round(time.Millisecond), attempts, lost.Round(time.Millisecond), cerr, aerr)

		rejoin := time.Now()
		if _, err := n2.Admin().ExecContext(ctx, "SET GLOBAL wsrep_provider_options = 'gmcast.isolate=0'"); err != nil {
			t.Fatalf("ending node2's isolation: %v", err)
		}
		hatest.WaitGaleraSize(t, n2, 3, hatest.Ceiling)
		t.Logf("HA-RESULT Galera node isolation: node2 back in the primary component, synced, %v after the isolation ended", time.Since(rejoin).Round(time.Millisecond))
		for _, n := range g.Nodes {
			v, err := n.QueryString(ctx, "SELECT v FROM ha_business WHERE id = 1")
			if err != nil {
				t.Fatalf("%s: %v", n.Name, err)
			}
			if got, err := strconv.ParseInt(v, 10, 64); err != nil || got >= marker {
				t.Errorf("%s: v = %s: the isolated holder's write (+%d) landed", n.Name, v, marker)
			}
		}
		if _, err := acquireCommit(ctx, l2, key, hatest.Ceiling); err != nil {
			t.Errorf("acquire-and-commit on node2 after it rejoined: %v", err)
		}
	})

	t.Run("node-kill", func(t *testing.T) {
		// Last: it leaves a 2-node cluster. A holder on node3, node3
		// SIGKILLed; measure until a holder on node1 commits.
		key := dblock.Resource("ha:galera-kill")
		l3 := nodeLocker(t, g.Nodes[2], dblock.GaleraSingleWriter(), dblock.Defaults(dblock.Lease(2*time.Second)))
		l1 := nodeLocker(t, g.Nodes[0], dblock.GaleraSingleWriter())
		if _, err := acquireCommit(ctx, l3, key, hatest.Ceiling); err != nil {
			t.Fatal(err)
		}
		waitKeyRow(t, g.Nodes[0], key)
		holder, err := l3.Lock(ctx, key)
		if err != nil {
			t.Fatalf("holder on node3: %v", err)
		}
		defer func() { _ = holder.Rollback() }()
		killed := time.Now()
		if err := g.Nodes[2].Kill(); err != nil {
			t.Fatal(err)
		}
		attempts, err := acquireCommit(ctx, l1, key, hatest.Ceiling)
		if err != nil {
			t.Fatalf("acquire-and-commit on node1 after node3's kill: %v", err)
		}
		took := time.Since(killed)
		select {
		case <-holder.Lost():
		case <-time.After(hatest.Ceiling):
			t.Errorf("holder on the killed node: Lost() not closed within %v", hatest.Ceiling)
		}
		cerr := holder.Commit()
		t.Logf("HA-RESULT Galera node kill: kill→acquire-and-commit on node1 %v (%d attempts); holder on the killed node: Commit -> %v", took.Round(time.Millisecond), attempts, cerr)
		if !errors.Is(cerr, dblock.ErrLockLost) {
			t.Errorf("holder's Commit on the killed node = %v, want ErrLockLost", cerr)
		}
	})
}

// minSections is how many critical sections a load test must have
// committed before it stops: its check must have something to check.
const minSections = 20

// keepGoing returns a loop condition for load goroutines: true for at
// least d, then until done reaches minDone, and false from hatest.Ceiling on
// (the test then reports how few sections it saw).
func keepGoing(d time.Duration, minDone int64, done *atomic.Int64) func() bool {
	start := time.Now()
	return func() bool {
		el := time.Since(start)
		return el < d || (done.Load() < minDone && el < hatest.Ceiling)
	}
}

// nodeLocker returns a Locker on node for the account app, closed when t
// ends.
func nodeLocker(t *testing.T, node *hatest.Node, opts ...dblock.Option) *dblock.Locker {
	t.Helper()
	return newLocker(t, openGorm(t, node.DSN("app", "app")), opts...)
}

// waitKeyRow waits until key's lock row has replicated to node.
func waitKeyRow(t *testing.T, node *hatest.Node, key dblock.Key) {
	t.Helper()
	h := lockkey.Fields(key).Hash()
	deadline := time.Now().Add(hatest.Ceiling)
	for {
		n, err := node.QueryString(context.Background(), "SELECT COUNT(*) FROM tb_lock WHERE key_hash = ?", h[:])
		if err == nil && n == "1" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the row of %s did not arrive within %v (count %q, %v)", node.Name, key, hatest.Ceiling, n, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// countingHandler is a slog handler that keeps the messages of the
// records it gets (every level).
type countingHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.msgs = append(h.msgs, r.Message)
	h.mu.Unlock()
	return nil
}

func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

// count returns how many messages contain sub.
func (h *countingHandler) count(sub string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range h.msgs {
		if strings.Contains(m, sub) {
			n++
		}
	}
	return n
}
