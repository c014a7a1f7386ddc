package hatest_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/hatest"
	"github.com/txlock/txlock/internal/linearize"
	"github.com/txlock/txlock/internal/linearize/lockload"
	"github.com/txlock/txlock/migrations"
)

// Environment of TestGaleraCausal.
const (
	envGaleraCausal         = "TXLOCK_HA_CAUSAL"          // "1": run it (a few minutes)
	envGaleraCausalDuration = "TXLOCK_HA_CAUSAL_DURATION" // per run, a Go duration (8 s by default)
	envGaleraCausalRounds   = "TXLOCK_HA_CAUSAL_ROUNDS"   // rounds over every variant (1 by default)
	envGaleraCausalRun      = "TXLOCK_HA_CAUSAL_RUN"      // a regexp: only the runs whose protocol/shape/variant match (and the unprotected one each compares to)
)

// TestGaleraCausal is the investigation of issue 20 on a 3-node cluster,
// with raw SQL that emulates the lock protocol of GaleraMultiWriter
// (BEGIN; SELECT id FROM lock WHERE id=N FOR UPDATE; UPDATE lock SET
// updated_at=... WHERE id=N; SELECT v; UPDATE v=n+1; COMMIT), opt-in with
// TXLOCK_HA_CAUSAL=1:
//
//  1. which statements wsrep_sync_wait=1 makes wait (the node's
//     wsrep_causal_reads counter, statement by statement);
//  2. whether a row lock on node2 excludes a holder on node1 (it does not:
//     locks are node-local), and what certification does with the two;
//  3. what a holder's session does after a brute-force abort (the
//     applier of a conflicting write-set from another node rolls its
//     transaction back): the error, then autocommit;
//  4. the committed effect of read-modify-write increments (9 goroutines
//     over the 3 nodes, 3 counters, a pause of up to 2 ms between the read
//     and the write), checked with porcupine, for the lock-first shape
//     (Do, Lock, the decorator, DoMulti) and the read-first shape (LockTx
//     in a transaction that read before locking), over the binary
//     protocol (server-side prepared statements: go-sql-driver's default)
//     and the text protocol (interpolateParams=true), under each candidate
//     protection: wsrep_sync_wait=1 (the wait happens at BEGIN), a causal
//     read on a second connection to the same node after the grant,
//     innodb_snapshot_isolation=ON, and combinations; a transaction that
//     checks, just before COMMIT, that it is still the one that touched
//     the lock row (autocommit=0 and a marker of its own in the row); the
//     statements the library adds (a SET before COMMIT, SET STATEMENT
//     around the locking read); and, to see the mechanism, the
//     unprotected protocol with SELECT @@in_transaction after every
//     statement. Rounds interleave the variants; throughput is a ratio
//     to the unprotected protocol's in the same round; TXLOCK_HA_CAUSAL_RUN
//     selects runs;
//  5. the library's own paths (package lockload) over both protocols.
func TestGaleraCausal(t *testing.T) {
	hatest.SkipUnlessEnabled(t)
	if os.Getenv(envGaleraCausal) != "1" {
		t.Skipf("investigation of issue 20, a few minutes: opt-in with %s=1", envGaleraCausal)
	}
	duration := envDuration(t, envGaleraCausalDuration, 8*time.Second)
	rounds := 1
	if s := os.Getenv(envGaleraCausalRounds); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive number", envGaleraCausalRounds, s)
		}
		rounds = n
	}
	g := hatest.StartGalera(t, 3)
	t.Logf("HA-RESULT setup of a 3-node Galera cluster: %v", g.Setup.Round(time.Millisecond))
	g.Nodes[0].Exec(t,
		"CREATE TABLE test.causal_lock (id INT NOT NULL PRIMARY KEY, updated_at DATETIME(6) NOT NULL, holder BIGINT NOT NULL DEFAULT 0)",
		"CREATE TABLE test.causal_probe (id INT NOT NULL PRIMARY KEY, v BIGINT NOT NULL)",
		"INSERT INTO test.causal_probe VALUES (1, 0)",
		"INSERT INTO test.causal_lock (id, updated_at) VALUES (100, NOW(6))",
	)
	pools := make(map[causalProtocol][]*sql.DB)
	for _, proto := range []causalProtocol{binaryProtocol, textProtocol} {
		for _, n := range g.Nodes {
			db, err := sql.Open("mysql", n.DSN("root", "")+proto.dsnSuffix())
			if err != nil {
				t.Fatal(err)
			}
			db.SetMaxOpenConns(64)
			t.Cleanup(func() { _ = db.Close() })
			pools[proto] = append(pools[proto], db)
		}
	}
	text := pools[textProtocol]
	for _, p := range text {
		waitRow(t, p, "SELECT COUNT(*) FROM test.causal_lock WHERE id = 100")
	}

	t.Run("which-statements-wait", func(t *testing.T) { causalWhichStatements(t, g.Nodes[0], text[0]) })
	t.Run("node-local-locks", func(t *testing.T) { causalNodeLocal(t, text) })
	t.Run("after-brute-force-abort", func(t *testing.T) { causalAfterAbort(t, text) })

	t.Run("workload", func(t *testing.T) { causalWorkload(t, g, pools, rounds, duration) })
	t.Run("library-protocols", func(t *testing.T) { causalLibrary(t, g, rounds, duration) })
}

// causalWorkload is part 4: the raw protocol under every variant, shape
// and protocol, rounds interleaving them.
func causalWorkload(t *testing.T, g *hatest.Galera, pools map[causalProtocol][]*sql.DB, rounds int, duration time.Duration) {
	type result struct {
		res             linearize.Result
		lost, stale     int
		rate, ratio     float64
		outside         int
		notCommittedErr map[string]int
	}
	var filter *regexp.Regexp
	if s := os.Getenv(envGaleraCausalRun); s != "" {
		var err error
		if filter, err = regexp.Compile(s); err != nil {
			t.Fatalf("%s=%q: %v", envGaleraCausalRun, s, err)
		}
	}
	results := make(map[string][]result) // protocol/shape/variant -> per round
	name := func(p causalProtocol, s causalShape, v causalVariant) string {
		return string(p) + "/" + string(s) + "/" + v.name
	}
	seq := 0
	for round := 1; round <= rounds; round++ {
		for _, proto := range []causalProtocol{binaryProtocol, textProtocol} {
			for _, shape := range []causalShape{lockFirst, readFirst} {
				run := []causalVariant{causalVariants[0]} // the unprotected protocol, first: the others compare to it
				for _, v := range causalVariants[1:] {
					if filter == nil || filter.MatchString(name(proto, shape, v)) {
						run = append(run, v)
					}
				}
				if len(run) == 1 && filter != nil && !filter.MatchString(name(proto, shape, run[0])) {
					continue
				}
				var base float64
				for vi, v := range run {
					seq++
					res, rate, errs, outside := runCausal(t, g, pools[proto], fmt.Sprintf("causal_ctr_%d", seq), shape, v, duration)
					r := result{res: res, rate: rate, outside: outside, notCommittedErr: errs}
					for _, a := range res.Anomalies {
						switch a.Kind {
						case linearize.DuplicateRead:
							r.lost += len(a.Ops) - 1
						case linearize.StaleRead:
							r.stale++
						}
					}
					if vi == 0 {
						base = rate
					}
					r.ratio = rate / base
					n := name(proto, shape, v)
					results[n] = append(results[n], r)
					t.Logf("round %d %-62s %s; %.0f committed/s (x%.2f); %d committed after statements outside their transaction; not committed by error %v",
						round, n, res.Summary(), rate, r.ratio, outside, errs)
					if res.Totals().Committed == 0 {
						t.Errorf("%s: nothing committed", n)
					}
				}
			}
		}
	}
	t.Logf("HA-RESULT Galera causal investigation: %d round(s) of %v per variant, 9 goroutines over 3 nodes, 3 counters", rounds, duration)
	for _, proto := range []causalProtocol{binaryProtocol, textProtocol} {
		for _, shape := range []causalShape{lockFirst, readFirst} {
			for _, v := range causalVariants {
				n := name(proto, shape, v)
				if len(results[n]) == 0 {
					continue
				}
				var b strings.Builder
				for _, r := range results[n] {
					fmt.Fprintf(&b, " [%s: %d committed of %d, %d lost updates, %d stale reads, %.0f/s = x%.2f",
						r.res.Verdict, r.res.Totals().Committed, r.res.Totals().Ops, r.lost, r.stale, r.rate, r.ratio)
					if v.probes {
						fmt.Fprintf(&b, ", %d committed after a statement ran outside the transaction", r.outside)
					}
					b.WriteString("]")
				}
				t.Logf("HA-RESULT %-62s%s", n, b.String())
			}
		}
	}
	// The stale snapshot of the read-first shape is the one mechanism
	// that needs no bad luck: without protection it loses updates in
	// every run.
	for _, proto := range []causalProtocol{binaryProtocol, textProtocol} {
		for i, r := range results[name(proto, readFirst, causalVariants[0])] {
			if r.res.Verdict != linearize.NotLinearizable {
				t.Errorf("round %d: unprotected read-first over the %s protocol is %s, expected NOT linearizable (a stale snapshot)", i+1, proto, r.res.Verdict)
			}
		}
	}
}

// causalLibrary runs the library's own paths (lockload, every Locker with
// GaleraMultiWriter, 9 goroutines over the 3 nodes) over the binary and
// the text protocol: the lock-first paths (Do, Lock, the decorator,
// DoMulti), then every path.
func causalLibrary(t *testing.T, g *hatest.Galera, rounds int, d time.Duration) {
	ctx := context.Background()
	if _, err := migrations.Up(ctx, g.Nodes[0].Admin()); err != nil {
		t.Fatalf("migrations.Up: %v", err)
	}
	clients := map[causalProtocol]*galeraClientSet{
		binaryProtocol: galeraClients(t, g, false, dblock.GaleraMultiWriter()),
		textProtocol:   galeraClients(t, g, true, dblock.GaleraMultiWriter()),
	}
	seq := 0
	var summary []string
	for round := 1; round <= rounds; round++ {
		for _, c := range []galeraLinearConfig{
			{name: "lock-first paths", spread: true, paths: withoutPath(lockload.ReadFirst)},
			{name: "every path", spread: true, paths: lockload.AllPaths},
		} {
			for _, proto := range []causalProtocol{binaryProtocol, textProtocol} {
				seq++
				ctrs := lockload.Counters{Table: "causal_lib_" + strconv.Itoa(seq), Prefix: "causal-lib-" + strconv.Itoa(seq) + ":", N: 3}
				cl := clients[proto]
				cl.prepare(t, ctrs)
				res, stats := cl.run(t, ctrs, c, d)
				paths, nodes := res.Involvement()
				line := fmt.Sprintf("round %d library %s over the %s protocol: %s; anomalies by paths %v, by nodes %v; %s",
					round, c.name, proto, res.Summary(), paths, nodes, stats)
				t.Log(line)
				summary = append(summary, line)
				if res.Totals().Committed == 0 {
					t.Errorf("%s: nothing committed", line)
				}
			}
		}
	}
	for _, l := range summary {
		t.Logf("HA-RESULT %s", l)
	}
}

// causalProtocol is how statements with arguments reach the server.
type causalProtocol string

const (
	binaryProtocol causalProtocol = "binary" // server-side prepared statements: go-sql-driver's default
	textProtocol   causalProtocol = "text"   // interpolateParams=true
)

func (p causalProtocol) dsnSuffix() string {
	if p == textProtocol {
		return "&interpolateParams=true"
	}
	return ""
}

// envDuration reads a positive Go duration from env, or returns def.
func envDuration(t *testing.T, env string, def time.Duration) time.Duration {
	t.Helper()
	s := os.Getenv(env)
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive Go duration such as 10s", env, s)
	}
	return d
}

// firstLinesOf returns the first n lines of s.
func firstLinesOf(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	return strings.Join(lines[:min(n, len(lines))], "\n")
}

// causalReads returns node's wsrep_causal_reads counter.
func causalReads(t *testing.T, node *hatest.Node) int64 {
	t.Helper()
	s, err := node.QueryString(context.Background(), "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'WSREP_CAUSAL_READS'")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// causalWhichStatements runs statements one by one on one connection of an
// otherwise idle node and reports which ones made a causal read
// (wsrep_causal_reads +1), with wsrep_sync_wait=1 for the session and,
// last, with it 0 and SET STATEMENT wsrep_sync_wait=1 per statement.
func causalWhichStatements(t *testing.T, node *hatest.Node, db *sql.DB) {
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	steps := []struct {
		stmt string
		want int64 // causal reads expected: the facts this test records
	}{
		{"SET SESSION wsrep_sync_wait = 1", 0},
		{"SELECT v FROM test.causal_probe WHERE id = 1", 1}, // autocommit read
		{"START TRANSACTION", 1},                            // BEGIN waits
		{"SELECT id FROM test.causal_probe WHERE id = 1 FOR UPDATE", 0},
		{"UPDATE test.causal_probe SET v = v + 1 WHERE id = 1", 0},
		{"SELECT v FROM test.causal_probe WHERE id = 1", 0},
		{"SET STATEMENT wsrep_sync_wait = 1 FOR SELECT v FROM test.causal_probe WHERE id = 1", 0},
		{"COMMIT", 0},
		{"SET SESSION wsrep_sync_wait = 3", 0},
		{"BEGIN", 1},
		{"UPDATE test.causal_probe SET v = v + 1 WHERE id = 1", 0}, // mask 2, but inside the transaction
		{"COMMIT", 0},
		{"SET SESSION wsrep_sync_wait = 0", 0},
		{"SET STATEMENT wsrep_sync_wait = 1 FOR SELECT v FROM test.causal_probe WHERE id = 1", 1},
		{"START TRANSACTION", 0},
		{"SET STATEMENT wsrep_sync_wait = 1 FOR SELECT v FROM test.causal_probe WHERE id = 1", 0},
		{"COMMIT", 0},
	}
	var table strings.Builder
	for _, s := range steps {
		before := causalReads(t, node)
		if _, err := conn.ExecContext(ctx, s.stmt); err != nil {
			t.Fatalf("%s: %v", s.stmt, err)
		}
		got := causalReads(t, node) - before
		fmt.Fprintf(&table, "\n  %-85s causal reads +%d", s.stmt, got)
		if got != s.want {
			t.Errorf("%s: %d causal reads, want %d", s.stmt, got, s.want)
		}
	}
	t.Logf("HA-RESULT which statements wsrep_sync_wait makes wait (MariaDB %s):%s", versionOf(t, node), table.String())
}

func versionOf(t *testing.T, node *hatest.Node) string {
	v, err := node.QueryString(context.Background(), "SELECT VERSION()")
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// causalNodeLocal: a holder on node1 has the lock row (FOR UPDATE and the
// touch); a second transaction on node2 asks for it with NOWAIT: it is
// granted at once (row locks are node-local). Both have written the row;
// node1 commits, then node2: certification refuses node2's (1213). Then
// the same with node2 committing first.
func causalNodeLocal(t *testing.T, pools []*sql.DB) {
	ctx := context.Background()
	for _, first := range []int{0, 1} {
		// Both nodes first apply what the cluster committed, so that only
		// the two transactions below conflict.
		for _, p := range pools[:2] {
			var n int
			if err := p.QueryRowContext(ctx, "SET STATEMENT wsrep_sync_wait = 1 FOR SELECT COUNT(*) FROM test.causal_lock").Scan(&n); err != nil {
				t.Fatal(err)
			}
		}
		var txs [2]*sql.Tx
		var grant [2]time.Duration
		for i := range 2 {
			tx, err := pools[i].BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback() //nolint:errcheck // ended below; a no-op then
			start := time.Now()
			if _, err := tx.ExecContext(ctx, "SELECT id FROM test.causal_lock WHERE id = 100 FOR UPDATE NOWAIT"); err != nil {
				t.Fatalf("node%d: the locking read while node%d holds the row: %v", i+1, 2-i, err)
			}
			grant[i] = time.Since(start)
			if _, err := tx.ExecContext(ctx, "UPDATE test.causal_lock SET updated_at = GREATEST(NOW(6), updated_at + INTERVAL 1 MICROSECOND) WHERE id = 100"); err != nil {
				t.Fatalf("node%d: the touch: %v", i+1, err)
			}
			txs[i] = tx
		}
		e1 := txs[first].Commit()
		e2 := txs[1-first].Commit()
		t.Logf("HA-RESULT node-local row locks: the holder on node1 has the row (FOR UPDATE + touch); FOR UPDATE NOWAIT on node2 granted in %v (node1's in %v); node%d COMMIT -> %v; then node%d COMMIT -> %v",
			grant[1].Round(time.Microsecond), grant[0].Round(time.Microsecond), first+1, e1, 2-first, e2)
		if e1 != nil || mysqlErr(e2) != 1213 {
			t.Errorf("first COMMIT %v, second %v: want nil, then 1213 (certification failure or brute-force abort)", e1, e2)
		}
	}
}

// causalAfterAbort: a holder on node2 (FOR UPDATE + touch) runs a long
// statement (DO SLEEP(1)) while a holder on node1 touches the same row,
// writes the counter and commits; node2's applier then aborts node2's
// holder (brute force). What its session sees: the statement fails with
// 1213 and the transaction is gone; the session is back in autocommit, so
// that a write the client sends next commits at once, outside any lock,
// and its COMMIT answers OK. A client that goes on after a failed
// statement writes without the lock.
func causalAfterAbort(t *testing.T, pools []*sql.DB) {
	ctx := context.Background()
	n1, n2 := pools[0], pools[1]
	if _, err := n1.ExecContext(ctx, "UPDATE test.causal_probe SET v = 0 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	var v0 int64
	if err := n2.QueryRowContext(ctx, "SET STATEMENT wsrep_sync_wait = 1 FOR SELECT v FROM test.causal_probe WHERE id = 1").Scan(&v0); err != nil || v0 != 0 {
		t.Fatalf("node2 reads %d (%v), want 0", v0, err)
	}
	conn, err := n2.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	h2, err := conn.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Rollback() //nolint:errcheck // ended below
	for _, q := range []string{
		"SELECT id FROM test.causal_lock WHERE id = 100 FOR UPDATE",
		"UPDATE test.causal_lock SET updated_at = GREATEST(NOW(6), updated_at + INTERVAL 1 MICROSECOND) WHERE id = 100",
	} {
		if _, err := h2.ExecContext(ctx, q); err != nil {
			t.Fatalf("node2: %s: %v", q, err)
		}
	}
	sleeping := make(chan error, 1)
	go func() {
		_, err := h2.ExecContext(ctx, "DO SLEEP(1)")
		sleeping <- err
	}()
	waitRow(t, n2, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = 'DO SLEEP(1)'")
	h1, err := n1.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"SELECT id FROM test.causal_lock WHERE id = 100 FOR UPDATE",
		"UPDATE test.causal_lock SET updated_at = GREATEST(NOW(6), updated_at + INTERVAL 1 MICROSECOND) WHERE id = 100",
		"UPDATE test.causal_probe SET v = v + 1000 WHERE id = 1",
	} {
		if _, err := h1.ExecContext(ctx, q); err != nil {
			t.Fatalf("node1: %s: %v", q, err)
		}
	}
	if err := h1.Commit(); err != nil {
		t.Fatalf("node1 COMMIT: %v", err)
	}
	sleepErr := <-sleeping
	var inTx int
	inTxErr := h2.QueryRowContext(ctx, "SELECT @@in_transaction").Scan(&inTx)
	_, writeErr := h2.ExecContext(ctx, "UPDATE test.causal_probe SET v = 7 WHERE id = 1")
	commitErr := h2.Commit()
	var v int64
	if err := n1.QueryRowContext(ctx, "SET STATEMENT wsrep_sync_wait = 1 FOR SELECT v FROM test.causal_probe WHERE id = 1").Scan(&v); err != nil {
		t.Fatal(err)
	}
	t.Logf("HA-RESULT after a brute-force abort: the holder's DO SLEEP(1) -> %v; @@in_transaction -> %d (%v); its next UPDATE v = 7 -> %v; COMMIT -> %v; the counter on node1: %d (node1's holder wrote 1000)",
		sleepErr, inTx, inTxErr, writeErr, commitErr, v)
	if mysqlErr(sleepErr) != 1213 || inTx != 0 || writeErr != nil || commitErr != nil || v != 7 {
		t.Errorf("want 1213, @@in_transaction 0, the UPDATE committed in autocommit (v = 7) and COMMIT OK")
	}
}

// waitRow polls q (a COUNT) on db until it is 1.
func waitRow(t *testing.T, db *sql.DB, q string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		if err := db.QueryRow(q).Scan(&n); err == nil && n == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not 1 after 30 s", q)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// causalShape is the order of the lock and the first read.
type causalShape string

const (
	lockFirst causalShape = "lock-first" // Do, Lock, the decorator, DoMulti: the lock is the first statement
	readFirst causalShape = "read-first" // LockTx in a transaction that read the counter before locking
)

// A causalVariant is a candidate protection of the lock's transaction.
type causalVariant struct {
	name string
	// beginSync: SET SESSION wsrep_sync_wait=1, so that BEGIN waits until
	// the node applied what the cluster committed before it (the only
	// statement of the transaction it applies to).
	beginSync bool
	// grantSync: after the grant (and the touch), a causal read on a
	// second connection to the same node (autocommit SELECT 1 with
	// wsrep_sync_wait=1): the node then applied what the cluster
	// committed before the grant, before the transaction's first read.
	grantSync bool
	// snapshot: innodb_snapshot_isolation=ON, from BEGIN for lock-first,
	// right after the lock and the touch for read-first (as LockTx turns
	// it on), so that a write to a row changed after the read view fails
	// with 1020.
	snapshot bool
	// probes: SELECT @@in_transaction after every statement, to count the
	// committed increments whose transaction had ended before COMMIT
	// without the client being told (the probes change the timing).
	probes bool
	// setBeforeCommit: SET SESSION innodb_snapshot_isolation = OFF as the
	// transaction's last statement before COMMIT, as LockTx's guard does
	// (else, with snapshot, it is turned off after COMMIT).
	setBeforeCommit bool
	// setStatementLock: the locking read as the library sends it when a
	// deadline bounds the wait: SET STATEMENT max_statement_time=...,
	// innodb_lock_wait_timeout=... FOR SELECT ... FOR UPDATE.
	setStatementLock bool
	// verify: autocommit=0 on the session, the touch also writes a marker
	// unique to the increment, and just before COMMIT a text-protocol read
	// checks that the transaction still sees its own marker; if not (the
	// transaction ended unnoticed, and the statements after that ran in a
	// new implicit transaction), ROLLBACK.
	verify bool
}

var causalVariants = []causalVariant{
	{name: "unprotected"},
	{name: "unprotected+in_transaction probes", probes: true},
	{name: "wsrep_sync_wait=1 (BEGIN)", beginSync: true},
	{name: "snapshot_isolation", snapshot: true},
	{name: "wsrep_sync_wait=1+snapshot_isolation", beginSync: true, snapshot: true},
	{name: "causal read after grant", grantSync: true},
	{name: "causal read after grant+snapshot_isolation", grantSync: true, snapshot: true},
	{name: "unprotected+SET before COMMIT", setBeforeCommit: true},
	{name: "snapshot_isolation, reset before COMMIT", snapshot: true, setBeforeCommit: true},
	{name: "snapshot_isolation, reset before COMMIT, SET STATEMENT lock", snapshot: true, setBeforeCommit: true, setStatementLock: true},
	{name: "autocommit=0+own marker checked before COMMIT", verify: true},
	{name: "autocommit=0+own marker checked before COMMIT+snapshot_isolation", verify: true, snapshot: true},
}

// causalHold bounds the server-side pause between the read and the write
// (uniform in [0, causalHold)): the holder's work.
const causalHold = 2 * time.Millisecond

// runCausal runs the raw protocol of shape under v for d on 9 goroutines
// over the nodes (pools, one per node), and checks the history. It returns
// the check, the committed increments per second, the not-committed ones
// by error, and (v.probes) how many committed increments had run a
// statement after their transaction had silently ended.
func runCausal(t *testing.T, g *hatest.Galera, pools []*sql.DB, table string, shape causalShape, v causalVariant, d time.Duration) (linearize.Result, float64, map[string]int, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d+2*time.Minute)
	defer cancel()
	const counters = 3
	if _, err := pools[0].ExecContext(ctx, "CREATE TABLE test."+table+" (id INT NOT NULL PRIMARY KEY, v BIGINT NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	for i := range counters {
		if _, err := pools[0].ExecContext(ctx, "INSERT IGNORE INTO test.causal_lock (id, updated_at) VALUES (?, NOW(6))", i); err != nil {
			t.Fatal(err)
		}
	}
	for i := range counters {
		if _, err := pools[0].ExecContext(ctx, "INSERT INTO test."+table+" VALUES (?, 0)", i); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range pools {
		waitRow(t, p, fmt.Sprintf("SELECT COUNT(*) = %d FROM test.%s", counters, table))
	}

	var rec linearize.Recorder
	var mu sync.Mutex
	errs := make(map[string]int)
	outside := 0
	seed := uint64(time.Now().UnixNano())
	start := time.Now()
	stop := start.Add(d)
	var wg sync.WaitGroup
	for c := range 9 {
		n := c % len(g.Nodes)
		wg.Go(func() {
			w, err := newCausalWorker(ctx, pools[n], v)
			if err != nil {
				t.Errorf("client %d: %v", c, err)
				return
			}
			w.id = int64(c + 1)
			defer w.close()
			rng := rand.New(rand.NewPCG(seed, uint64(c)))
			for time.Now().Before(stop) && ctx.Err() == nil {
				k := rng.IntN(counters)
				p := rec.Begin(strconv.Itoa(k), c, string(shape), g.Nodes[n].Name)
				hold := time.Duration(rng.Int64N(int64(causalHold)))
				outcome, ended, err := w.increment(ctx, table, k, shape, hold, p)
				p.End(outcome, err)
				mu.Lock()
				if errors.Is(err, errEndedUnnoticed) {
					errs[outcome.String()+": ended unnoticed, caught before COMMIT"]++
				} else if err != nil {
					errs[outcome.String()+": "+errLabel(err)]++
				}
				if ended && outcome == linearize.Committed {
					outside++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	final := make(map[string]int64)
	for i := range counters {
		var x int64
		if err := syncedRead(ctx, pools[0], "SELECT v FROM test."+table+" WHERE id = ?", i, &x); err != nil {
			t.Fatal(err)
		}
		final[strconv.Itoa(i)] = x
	}
	res, err := linearize.Check(linearize.History{Ops: rec.Ops(), Final: final}, linearize.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return res, float64(res.Totals().Committed) / elapsed.Seconds(), errs, outside
}

// syncedRead runs q with a causal wait (autocommit) on db.
func syncedRead(ctx context.Context, db *sql.DB, q string, arg any, dest any) error {
	return db.QueryRowContext(ctx, "SET STATEMENT wsrep_sync_wait = 1 FOR "+q, arg).Scan(dest)
}

// errLabel names a server error by number, or the error.
func errLabel(err error) string {
	if n := mysqlErr(err); n != 0 {
		return strconv.Itoa(int(n))
	}
	s := err.Error()
	if len(s) > 40 {
		s = s[:40]
	}
	return s
}

// causalWorker is one goroutine's connections: the lock's, and for
// grantSync a second one to the same node that makes the causal reads.
type causalWorker struct {
	v          causalVariant
	conn, side *sql.Conn
	id, seq    int64 // for markers
}

func newCausalWorker(ctx context.Context, db *sql.DB, v causalVariant) (*causalWorker, error) {
	w := &causalWorker{v: v}
	var err error
	if w.conn, err = db.Conn(ctx); err != nil {
		return nil, err
	}
	// Every session setting explicitly: pooled connections keep what an
	// earlier variant set.
	sync := "0"
	if v.beginSync {
		sync = "1"
	}
	autocommit := "1"
	if v.verify {
		autocommit = "0"
	}
	for _, s := range []string{
		"SET SESSION innodb_lock_wait_timeout = 5",
		"SET SESSION innodb_snapshot_isolation = OFF",
		"SET SESSION wsrep_sync_wait = " + sync,
		"SET SESSION autocommit = " + autocommit,
	} {
		if _, err := w.conn.ExecContext(ctx, s); err != nil {
			w.close()
			return nil, err
		}
	}
	if v.grantSync {
		if w.side, err = db.Conn(ctx); err == nil {
			_, err = w.side.ExecContext(ctx, "SET SESSION wsrep_sync_wait = 1")
		}
		if err != nil {
			w.close()
			return nil, err
		}
	}
	return w, nil
}

// close gives the connections back to the pool, their sessions reset.
func (w *causalWorker) close() {
	ctx := context.Background()
	for _, c := range []*sql.Conn{w.conn, w.side} {
		if c == nil {
			continue
		}
		_, _ = c.ExecContext(ctx, "SET SESSION innodb_snapshot_isolation = OFF, wsrep_sync_wait = 0, autocommit = 1")
		_ = c.Close()
	}
}

// increment runs one increment of counter k and returns its outcome:
// committed when COMMIT succeeded; not committed when a statement before
// COMMIT failed (the transaction is rolled back) or COMMIT failed with a
// deadlock or certification failure (1213) or a stale write (1020);
// unknown otherwise. With probes, ended reports that SELECT
// @@in_transaction found the transaction over after a statement that
// succeeded.
func (w *causalWorker) increment(ctx context.Context, table string, k int, shape causalShape, hold time.Duration, p *linearize.Pending) (_ linearize.Outcome, ended bool, _ error) {
	if shape == readFirst && w.v.snapshot {
		// Turned on after the lock, so it must be off for the next
		// transaction's locking read (whose read view is older than the
		// lock row's last change), whatever the outcome.
		defer w.conn.ExecContext(ctx, "SET SESSION innodb_snapshot_isolation = OFF") //nolint:errcheck // a failure shows in the next transaction
	}
	tx, err := w.conn.BeginTx(ctx, nil)
	if err != nil {
		return linearize.NotCommitted, false, err
	}
	exec := func(q string, args ...any) error {
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return err
		}
		w.probe(ctx, tx, &ended)
		return nil
	}
	fail := func(err error) (linearize.Outcome, bool, error) {
		_ = tx.Rollback()
		return linearize.NotCommitted, ended, err
	}
	var v int64
	read := "SELECT v FROM test." + table + " WHERE id = ?"
	if shape == readFirst {
		if err := tx.QueryRowContext(ctx, read, k).Scan(&v); err != nil {
			return fail(err)
		}
		w.probe(ctx, tx, &ended)
	}
	if shape == lockFirst && w.v.snapshot {
		if err := exec("SET SESSION innodb_snapshot_isolation = ON"); err != nil {
			return fail(err)
		}
	}
	lock := "SELECT id FROM test.causal_lock WHERE id = ? FOR UPDATE"
	if w.v.setStatementLock {
		lock = "SET STATEMENT max_statement_time = 19.99, innodb_lock_wait_timeout = 21 FOR " + lock
	}
	if err := exec(lock, k); err != nil {
		return fail(err)
	}
	marker := w.next()
	if err := exec("UPDATE test.causal_lock SET updated_at = GREATEST(NOW(6), updated_at + INTERVAL 1 MICROSECOND), holder = ? WHERE id = ?", marker, k); err != nil {
		return fail(err)
	}
	if shape == readFirst && w.v.snapshot {
		if err := exec("SET SESSION innodb_snapshot_isolation = ON"); err != nil {
			return fail(err)
		}
	}
	if w.v.grantSync {
		if _, err := w.side.ExecContext(ctx, "SELECT 1"); err != nil {
			return fail(fmt.Errorf("the causal read after the grant: %w", err))
		}
	}
	if err := tx.QueryRowContext(ctx, read, k).Scan(&v); err != nil {
		return fail(err)
	}
	p.Read(v)
	w.probe(ctx, tx, &ended)
	if hold > 0 {
		// The work between the read and the write.
		if err := exec("DO SLEEP(?)", hold.Seconds()); err != nil {
			return fail(err)
		}
	}
	if err := exec("UPDATE test."+table+" SET v = ? WHERE id = ?", v+1, k); err != nil {
		return fail(err)
	}
	if w.v.setBeforeCommit {
		if err := exec("SET SESSION innodb_snapshot_isolation = OFF"); err != nil {
			return fail(err)
		}
	}
	if w.v.verify {
		// Literal, no arguments: the text protocol whatever the DSN.
		var seen int64
		if err := tx.QueryRowContext(ctx, fmt.Sprintf("SELECT holder FROM test.causal_lock WHERE id = %d", k)).Scan(&seen); err != nil {
			return fail(err)
		}
		if seen != marker {
			return fail(fmt.Errorf("%w: the lock row shows marker %d, not this transaction's %d", errEndedUnnoticed, seen, marker))
		}
	}
	err = tx.Commit()
	switch n := mysqlErr(err); {
	case err == nil:
		return linearize.Committed, ended, nil
	case n == 1213, n == 1020, errors.Is(err, sql.ErrTxDone):
		return linearize.NotCommitted, ended, err
	default:
		return linearize.Unknown, ended, err
	}
}

// errEndedUnnoticed: the verify variant found that its transaction had
// ended without an error reaching the client.
var errEndedUnnoticed = errors.New("the transaction ended unnoticed")

// next returns a marker unique to one increment of this worker.
func (w *causalWorker) next() int64 {
	w.seq++
	return w.id<<32 | w.seq
}

// probe sets *ended when the variant probes and the session is no longer
// in a transaction.
func (w *causalWorker) probe(ctx context.Context, tx *sql.Tx, ended *bool) {
	if !w.v.probes {
		return
	}
	var in int
	if err := tx.QueryRowContext(ctx, "SELECT @@in_transaction").Scan(&in); err == nil && in == 0 {
		*ended = true
	}
}
