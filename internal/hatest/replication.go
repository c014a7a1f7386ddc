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
	CatchUp(t, p.Primary, p.Replica, 30*time.Second)
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
	WaitReplicating(t, r, 30*time.Second)
	CatchUp(t, primary, r, 30*time.Second)
	if semiSync {
		WaitSemiSyncClients(t, primary, 1, 30*time.Second)
	}
	return r
}

// WaitReplicating waits until both replication threads of r run.
func WaitReplicating(t testing.TB, r *Node, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		io, sqlT, lastErr := slaveStatus(r)
		if io == "Yes" && sqlT == "Yes" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("hatest: %s: replication not running after %v (IO %q, SQL %q, last error %q)", r.Name, within, io, sqlT, lastErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func slaveStatus(r *Node) (io, sqlT, lastErr string) {
	rows, err := r.Admin().Query("SHOW SLAVE STATUS")
	if err != nil {
		return "", "", err.Error()
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	if !rows.Next() {
		return "", "", "no slave status"
	}
	vals := make([]any, len(cols))
	raw := make([][]byte, len(cols))
	for i := range vals {
		vals[i] = &raw[i]
	}
	if err := rows.Scan(vals...); err != nil {
		return "", "", err.Error()
	}
	for i, c := range cols {
		switch c {
		case "Slave_IO_Running":
			io = string(raw[i])
		case "Slave_SQL_Running":
			sqlT = string(raw[i])
		case "Last_Error", "Last_IO_Error", "Last_SQL_Error":
			if len(raw[i]) > 0 {
				lastErr = string(raw[i])
			}
		}
	}
	return io, sqlT, lastErr
}

// CatchUp waits until r has applied everything primary had binlogged when
// CatchUp was called.
func CatchUp(t testing.TB, primary, r *Node, within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within+5*time.Second)
	defer cancel()
	pos, err := primary.QueryString(ctx, "SELECT @@gtid_binlog_pos")
	if err != nil {
		t.Fatalf("hatest: %s: gtid_binlog_pos: %v", primary.Name, err)
	}
	res, err := r.QueryString(ctx, "SELECT MASTER_GTID_WAIT(?, ?)", pos, within.Seconds())
	if err != nil || res != "0" {
		t.Fatalf("hatest: %s did not catch up with %s (%q) within %v: %q %v", r.Name, primary.Name, pos, within, res, err)
	}
}

// WaitSemiSyncClients waits until primary has n semi-sync replicas and
// semi-sync is on.
func WaitSemiSyncClients(t testing.TB, primary *Node, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var name, clients, status string
		_ = primary.Admin().QueryRow("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_clients'").Scan(&name, &clients)
		_ = primary.Admin().QueryRow("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_status'").Scan(&name, &status)
		if clients == fmt.Sprint(n) && status == "ON" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("hatest: %s: %s semi-sync clients (want %d), status %s after %v", primary.Name, clients, n, status, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Promote makes r a primary: STOP SLAVE, then read_only=0 (and, on a
// semi-sync node, the master side of semi-sync on first).
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
// waits (up to within) until the SQL thread has applied every event the
// replica had received (Gtid_IO_Pos), then STOP SLAVE and read_only=0.
// STOP SLAVE alone may leave received but not yet applied events behind:
// with semi-sync those are exactly the acknowledged commits.
func PromoteAfterRelayLog(t testing.TB, r *Node, within time.Duration) {
	t.Helper()
	r.Exec(t, "STOP SLAVE IO_THREAD")
	ioPos := slaveColumn(r, "Gtid_IO_Pos")
	if ioPos != "" {
		ctx, cancel := context.WithTimeout(context.Background(), within+5*time.Second)
		res, err := r.QueryString(ctx, "SELECT MASTER_GTID_WAIT(?, ?)", ioPos, within.Seconds())
		cancel()
		if err != nil || res != "0" {
			t.Logf("hatest: %s: relay log not applied up to %q within %v (%q, %v): promoting anyway", r.Name, ioPos, within, res, err)
		}
	}
	Promote(t, r)
}

func slaveColumn(r *Node, col string) string {
	rows, err := r.Admin().Query("SHOW SLAVE STATUS")
	if err != nil {
		return ""
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	if !rows.Next() {
		return ""
	}
	vals := make([]any, len(cols))
	raw := make([][]byte, len(cols))
	for i := range vals {
		vals[i] = &raw[i]
	}
	if err := rows.Scan(vals...); err != nil {
		return ""
	}
	for i, c := range cols {
		if c == col {
			return string(raw[i])
		}
	}
	return ""
}
