package hatest

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// A Pair is a primary and its replica, and a relay that clients use to
// reach whichever of them is the primary.
type Pair struct {
	Primary  *Node
	Replica  *Node
	Relay    *Relay
	SemiSync bool
	Setup    time.Duration // from the first install to replication running
}

// StartPair starts a primary (server id 1) and a read-only replica of it
// (server id 2), GTID replication, semi-sync when semiSync, waits until the
// replica runs, creates the account app on the primary (replicated) and
// starts a relay to the primary. Everything is torn down when t ends.
func StartPair(t testing.TB, semiSync bool) *Pair {
	t.Helper()
	start := time.Now()
	p := &Pair{SemiSync: semiSync}
	p.Primary = StartNode(t, "primary", NodeOptions{ServerID: 1, SemiSync: semiSync})
	// The replica first: a semi-sync primary without one would stall each
	// commit for rpl_semi_sync_master_timeout (10 s) and fall back to async.
	p.Replica = StartReplica(t, "replica", 2, p.Primary, semiSync)
	p.Primary.Exec(t,
		"CREATE USER 'app'@'%' IDENTIFIED BY 'app'",
		"GRANT ALL ON test.* TO 'app'@'%'",
	)
	CatchUp(t, p.Primary, p.Replica, Ceiling)
	p.Relay = StartRelay(t, p.Primary.Addr())
	p.Setup = time.Since(start)
	return p
}

// StartReplica starts a new read-only node and makes it replicate primary
// from the start of its binary log, and waits until it has caught up.
func StartReplica(t testing.TB, name string, serverID int, primary *Node, semiSync bool) *Node {
	t.Helper()
	r := StartNode(t, name, NodeOptions{ServerID: serverID, ReadOnly: true, SemiSync: semiSync})
	r.Exec(t,
		fmt.Sprintf("CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%d, MASTER_USER='root', MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos", primary.Port),
		"START SLAVE",
	)
	WaitReplicating(t, r, Ceiling)
	CatchUp(t, primary, r, Ceiling)
	if semiSync {
		WaitSemiSyncClients(t, primary, 1, Ceiling)
	}
	return r
}

// WaitReplicating waits until both replication threads of r run, and
// fails t, naming their state, if they do not within.
func WaitReplicating(t testing.TB, r *Node, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st := replicationState(r)
		if st.ioRunning == "Yes" && st.sqlRunning == "Yes" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("hatest: %s: replication not running after %v: %s", r.Name, within, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// SlaveStatus returns the row of SHOW SLAVE STATUS on r by column name;
// empty when r does not replicate, Last_Error only when it cannot answer.
func SlaveStatus(ctx context.Context, r *Node) map[string]string {
	rows, err := r.Admin().QueryContext(ctx, "SHOW SLAVE STATUS")
	if err != nil {
		return map[string]string{"Last_Error": err.Error()}
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	if !rows.Next() {
		return nil
	}
	vals := make([]any, len(cols))
	raw := make([][]byte, len(cols))
	for i := range vals {
		vals[i] = &raw[i]
	}
	if err := rows.Scan(vals...); err != nil {
		return map[string]string{"Last_Error": err.Error()}
	}
	out := make(map[string]string, len(cols))
	for i, c := range cols {
		out[c] = string(raw[i])
	}
	return out
}

// Ceiling bounds every wait of the harness for a replication or cluster
// state: generous enough for a busy 2-core machine (a replica applying a
// backlog of big transactions while other tests run), so that only a
// defect, a stopped replication thread or a wedged server, reaches it.
const Ceiling = 5 * time.Minute

// CatchUp waits until r has applied everything primary had binlogged when
// CatchUp was called (primary's gtid_binlog_pos), and fails t, naming both
// positions and r's replication state, if that does not happen within.
func CatchUp(t testing.TB, primary, r *Node, within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	pos, err := primary.QueryString(ctx, "SELECT @@gtid_binlog_pos")
	if err != nil {
		t.Fatalf("hatest: %s catching up with %s: reading %s's gtid_binlog_pos: %v", r.Name, primary.Name, primary.Name, err)
	}
	WaitGTID(t, fmt.Sprintf("%s catching up with %s", r.Name, primary.Name), r, pos, within)
}

// WaitGTID waits until r's SQL thread has applied every transaction up to
// the GTID position pos, and logs how long that took. It asks the server
// (MASTER_GTID_WAIT) in slices of a second, so that a SQL thread that
// stopped (on an error, or by STOP SLAVE) fails t at once; if pos is not
// reached within, it fails t naming step, pos, r's gtid_current_pos and
// its replication threads' state.
func WaitGTID(t testing.TB, step string, r *Node, pos string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		res, err := r.QueryString(ctx, "SELECT MASTER_GTID_WAIT(?, 1)", pos)
		cancel()
		if err == nil && res == "0" {
			took := time.Since(start)
			t.Logf("hatest: %s: %s reached %q in %v", step, r.Name, pos, took.Round(time.Millisecond))
			return took
		}
		st := replicationState(r)
		if st.sqlRunning == "No" {
			t.Fatalf("hatest: %s: %s's SQL thread stopped before %q was applied: %s", step, r.Name, pos, st)
		}
		if time.Now().After(deadline) {
			t.Fatalf("hatest: %s: %s did not apply up to %q within %v (last answer %q, %v): %s", step, r.Name, pos, within, res, err, st)
		}
	}
}

// replState is what a failure message says about a replica.
type replState struct {
	currentPos, ioPos                    string
	ioRunning, sqlRunning, lastSQLError  string
	lastIOError, secondsBehind, sqlState string
}

func (s replState) String() string {
	return fmt.Sprintf("gtid_current_pos %q, Gtid_IO_Pos %q, IO thread %q (%s), SQL thread %q (%s; %q), Seconds_Behind_Master %q",
		s.currentPos, s.ioPos, s.ioRunning, s.lastIOError, s.sqlRunning, s.sqlState, s.lastSQLError, s.secondsBehind)
}

// replicationState reads r's replication state; fields it cannot read
// stay empty.
func replicationState(r *Node) replState {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var s replState
	s.currentPos, _ = r.QueryString(ctx, "SELECT @@gtid_current_pos")
	cols := SlaveStatus(ctx, r)
	s.ioPos = cols["Gtid_IO_Pos"]
	s.ioRunning, s.sqlRunning = cols["Slave_IO_Running"], cols["Slave_SQL_Running"]
	s.lastIOError, s.lastSQLError = cols["Last_IO_Error"], cols["Last_SQL_Error"]
	s.secondsBehind, s.sqlState = cols["Seconds_Behind_Master"], cols["Slave_SQL_Running_State"]
	return s
}

// WaitSemiSyncClients waits until primary has n semi-sync replicas and
// semi-sync is on.
func WaitSemiSyncClients(t testing.TB, primary *Node, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		var name, clients, status string
		_ = primary.Admin().QueryRowContext(ctx, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_clients'").Scan(&name, &clients)
		_ = primary.Admin().QueryRowContext(ctx, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_status'").Scan(&name, &status)
		cancel()
		if clients == fmt.Sprint(n) && status == "ON" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("hatest: %s: %s semi-sync clients (want %d), status %s after %v", primary.Name, clients, n, status, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Promote makes r a primary at once: STOP SLAVE, then read_only=0 (and, on
// a semi-sync node, the master side of semi-sync on first). It does not
// wait for r to apply what it has received: events in its relay log that
// the SQL thread has not applied yet are dropped. That is what a hasty
// failover script does; PromoteAfterRelayLog is the careful way.
func Promote(t testing.TB, r *Node) {
	t.Helper()
	r.Exec(t, "STOP SLAVE")
	if r.SemiSync {
		r.Exec(t, "SET GLOBAL rpl_semi_sync_slave_enabled=0", "SET GLOBAL rpl_semi_sync_master_enabled=1")
	}
	r.Exec(t, "SET GLOBAL read_only=0")
}

// Fence makes n read-only (the old primary, before the replica is
// promoted): accounts without SUPER or READ ONLY ADMIN can no longer write.
func Fence(t testing.TB, n *Node) {
	t.Helper()
	n.Exec(t, "SET GLOBAL read_only=1")
}

// PromoteAfterRelayLog promotes r the careful way: it stops the IO thread,
// waits until the SQL thread has applied every event the replica had
// received (Gtid_IO_Pos), then STOP SLAVE and read_only=0. STOP SLAVE
// alone may leave received but not yet applied events behind: with
// semi-sync those are exactly the acknowledged commits. Applying them is a
// precondition of a careful promotion, so if it does not happen within,
// t fails naming the positions; it never promotes anyway.
func PromoteAfterRelayLog(t testing.TB, r *Node, within time.Duration) {
	t.Helper()
	r.Exec(t, "STOP SLAVE IO_THREAD")
	st := replicationState(r)
	if st.ioPos == "" && st.ioRunning == "" {
		t.Fatalf("hatest: promoting %s: no replication status to read Gtid_IO_Pos from: %s", r.Name, st)
	}
	if st.ioPos != "" {
		WaitGTID(t, fmt.Sprintf("promoting %s: applying its relay log", r.Name), r, st.ioPos, within)
	}
	Promote(t, r)
}
