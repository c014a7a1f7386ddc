package dblock_test

// A leader keeps one transaction open for as long as it leads. It holds
// no read view, but on MariaDB 10.11 an open transaction that holds a row
// lock FOR UPDATE (or wrote) keeps purge from removing the undo of every
// transaction that commits after it began: the history list grows with
// the commits made while it leads, and drains once it ends. The test logs
// the growth and asserts the drain after Resign (which fails if Resign
// left a transaction open).
//
// TXLOCK_ELECTION_SOAK=10m runs the long version: a leadership kept that
// long under write load, the history list length logged over time.

import (
	"context"
	"database/sql"
	"os"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
)

// historyLen returns the server's history list length.
func historyLen(t *testing.T, db *sql.DB) int64 {
	t.Helper()
	var n int64
	if err := db.QueryRow("SELECT `count` FROM information_schema.INNODB_METRICS WHERE name = 'trx_rseg_history_len'").Scan(&n); err != nil {
		t.Fatalf("reading trx_rseg_history_len: %v", err)
	}
	return n
}

// logTransactions logs the server's open transactions, for a failure:
// one of another test may be what holds purge back.
func logTransactions(t *testing.T, db *sql.DB) {
	t.Helper()
	rows, err := db.Query("SELECT trx_id, trx_started, trx_mysql_thread_id, trx_rows_modified, COALESCE(LEFT(trx_query, 80), '') FROM information_schema.INNODB_TRX ORDER BY trx_started")
	if err != nil {
		t.Logf("reading INNODB_TRX: %v", err)
		return
	}
	defer rows.Close()
	for rows.Next() {
		var id, started, q string
		var thread, modified int64
		if err := rows.Scan(&id, &started, &thread, &modified, &q); err == nil {
			t.Logf("open transaction %s since %s, connection %d, %d rows modified: %s", id, started, thread, modified, q)
		}
	}
}

// writeLoad updates one row of table n times, each in its own commit: n
// undo logs for purge.
func writeLoad(t *testing.T, ctx context.Context, db *sql.DB, table string, n int) {
	t.Helper()
	for i := range n {
		if _, err := db.ExecContext(ctx, "UPDATE `"+table+"` SET v = ? WHERE k = 'load'", i); err != nil {
			t.Fatalf("write load: %v", err)
		}
	}
}

// drained polls the history list until it is at most limit, and returns
// how long that took, or false after ceiling.
func drained(t *testing.T, db *sql.DB, limit int64, ceiling time.Duration) (time.Duration, int64, bool) {
	t.Helper()
	start := time.Now()
	for {
		h := historyLen(t, db)
		if h <= limit {
			return time.Since(start), h, true
		}
		if time.Since(start) > ceiling {
			return time.Since(start), h, false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestElectionHistoryList(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	table := e.kvTable(t)
	if err := put(e.db, table, "load", 0); err != nil {
		t.Fatal(err)
	}
	const n = 2000
	// Other tests on the shared server add their own history: the bound
	// is generous.
	const slack = n / 3
	h0 := historyLen(t, e.sqlDB)
	var began time.Time // server time, before the leadership
	if err := e.sqlDB.QueryRowContext(ctx, "SELECT NOW() - INTERVAL 1 SECOND").Scan(&began); err != nil {
		t.Fatal(err)
	}

	ld, err := l.Election(dblock.Resource("election:purge")).Campaign(ctx, "leader")
	if err != nil {
		t.Fatal(err)
	}
	defer rb(ld)
	writeLoad(t, ctx, e.sqlDB, table, n)
	const grace = 2 * time.Second
	took, hLead, purged := drained(t, e.sqlDB, h0+slack, grace)
	if purged {
		t.Logf("leading: history list %d before, %d after %d commits and %v: purge kept up (this server does not hold purge back for an open write transaction)", h0, hLead, n, took.Round(time.Millisecond))
	} else {
		t.Logf("leading: history list %d before, %d after %d commits and %v of purge: the leader's open write transaction holds purge back (MariaDB: every transaction with a row lock FOR UPDATE or a write does)", h0, hLead, n, grace)
	}
	if isClosed(ld.Done()) {
		t.Fatalf("the leadership ended: %v", ld.Err())
	}
	if err := ld.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	took, h, ok := drained(t, e.sqlDB, h0+slack, opTimeout)
	t.Logf("resigned: history list %d after %v", h, took.Round(time.Millisecond))
	if !ok {
		logTransactions(t, e.sqlDB)
		var older int
		if err := e.sqlDB.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_started < ?", began).Scan(&older); err == nil && older > 0 {
			t.Skipf("%d transaction(s) older than the leadership (another test's) hold purge back: the drain cannot be measured now", older)
		}
		t.Fatalf("after Resign the history list stayed at %d (> %d + %d) for %v: a transaction of the leadership is still open", h, h0, slack, took)
	}
}

// TestElectionSoak keeps a leadership for $TXLOCK_ELECTION_SOAK (e.g.
// 10m) under a light write load, logging the history list length every
// 30 s; it fails if the leadership ends, or if the history list does not
// drain once it is resigned.
func TestElectionSoak(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv("TXLOCK_ELECTION_SOAK"))
	if err != nil || d <= 0 {
		t.Skip("set TXLOCK_ELECTION_SOAK=10m to run the soak")
	}
	e, l := setupLocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), d+time.Minute)
	defer cancel()
	table := e.kvTable(t)
	if err := put(e.db, table, "load", 0); err != nil {
		t.Fatal(err)
	}
	ld, err := l.Election(dblock.Resource("election:soak")).Campaign(ctx, "soak")
	if err != nil {
		t.Fatal(err)
	}
	defer rb(ld)
	start := time.Now()
	h0 := historyLen(t, e.sqlDB)
	var writes, peak int64
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	load := time.NewTicker(10 * time.Millisecond) // ~100 commits a second
	defer load.Stop()
	t.Logf("soak %v: history list %d at the start", d, h0)
	for time.Since(start) < d {
		select {
		case <-ld.Done():
			t.Fatalf("the leadership ended after %v: %v", time.Since(start), ld.Err())
		case <-tick.C:
			h := historyLen(t, e.sqlDB)
			peak = max(peak, h)
			t.Logf("%v: history list %d, %d commits so far", time.Since(start).Round(time.Second), h, writes)
		case <-load.C:
			if _, err := e.sqlDB.ExecContext(ctx, "UPDATE `"+table+"` SET v = v + 1 WHERE k = 'load'"); err != nil {
				t.Fatal(err)
			}
			writes++
		}
	}
	h := historyLen(t, e.sqlDB)
	t.Logf("soak done: %v, %d commits, history list %d at the start, %d peak, %d at the end; leader still %q",
		d, writes, h0, peak, h, must(l.Election(dblock.Resource("election:soak")).Leader(ctx)))
	if err := ld.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	took, h, ok := drained(t, e.sqlDB, h0+writes/10, 5*time.Minute)
	t.Logf("resigned: history list %d after %v of purge", h, took.Round(time.Millisecond))
	if !ok {
		t.Fatalf("the history list did not drain after Resign")
	}
}

// must returns v, or the error's text.
func must(v string, err error) string {
	if err != nil {
		return err.Error()
	}
	return v
}
