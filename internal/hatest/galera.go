package hatest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/txlock/txlock/internal/testdb"
)

// GaleraProvider is the Galera library of Debian's galera-4 package.
const GaleraProvider = "/usr/lib/galera/libgalera_smm.so"

// A Galera is a cluster of nodes on this machine.
type Galera struct {
	Nodes []*Node
	Setup time.Duration
}

// StartGalera starts an n-node Galera cluster: node1 bootstraps it, the
// others join one after another (rsync SST). Each node has its own SQL,
// gcomm, IST and SST ports, its own tmpdir, and runs as the mysql user. It
// creates the account app on the cluster (replicated to every node) and
// tears everything down when t ends. It skips t when galera-4 is missing.
func StartGalera(t testing.TB, n int) *Galera {
	t.Helper()
	if _, err := os.Stat(GaleraProvider); err != nil {
		t.Skipf("HA test: %s is not installed (apt-get install galera-4)", GaleraProvider)
	}
	start := time.Now()
	type ports struct{ gcomm, ist, sst int }
	ps := make([]ports, n)
	for i := range ps {
		var err error
		if ps[i].gcomm, err = testdb.FreePort(); err == nil {
			if ps[i].ist, err = testdb.FreePort(); err == nil {
				ps[i].sst, err = testdb.FreePort()
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	var all []string
	for _, p := range ps {
		all = append(all, fmt.Sprintf("127.0.0.1:%d", p.gcomm))
	}
	g := &Galera{}
	for i, p := range ps {
		addr := "gcomm://" + strings.Join(all, ",")
		extra := []string{
			"--wsrep-on=ON",
			"--wsrep-provider=" + GaleraProvider,
			"--wsrep-cluster-name=txlock-ha",
			fmt.Sprintf("--wsrep-node-name=node%d", i+1),
			"--wsrep-node-address=127.0.0.1",
			fmt.Sprintf("--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:%d;ist.recv_addr=127.0.0.1:%d;gcache.size=32M", p.gcomm, p.ist),
			fmt.Sprintf("--wsrep-sst-receive-address=127.0.0.1:%d", p.sst),
			"--wsrep-sst-method=rsync",
			"--innodb-autoinc-lock-mode=2",
			"--default-storage-engine=InnoDB",
		}
		if i == 0 {
			extra = append(extra, "--wsrep-cluster-address=gcomm://", "--wsrep-new-cluster")
		} else {
			extra = append(extra, "--wsrep-cluster-address="+addr)
		}
		node := StartNode(t, fmt.Sprintf("galera%d", i+1), NodeOptions{ServerID: i + 1, Galera: true, Extra: extra})
		g.Nodes = append(g.Nodes, node)
		WaitGaleraSize(t, node, i+1, Ceiling)
	}
	g.Nodes[0].Exec(t,
		"CREATE USER 'app'@'%' IDENTIFIED BY 'app'",
		"GRANT ALL ON test.* TO 'app'@'%'",
	)
	g.Setup = time.Since(start)
	return g
}

// WaitGaleraSize waits until node is synced in a primary component of
// size nodes.
func WaitGaleraSize(t testing.TB, node *Node, size int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		var name, sz, state string
		_ = node.Admin().QueryRowContext(ctx, "SHOW GLOBAL STATUS LIKE 'wsrep_cluster_size'").Scan(&name, &sz)
		_ = node.Admin().QueryRowContext(ctx, "SHOW GLOBAL STATUS LIKE 'wsrep_local_state_comment'").Scan(&name, &state)
		cancel()
		if sz == fmt.Sprint(size) && state == "Synced" {
			t.Logf("hatest: %s synced in a cluster of %d after %v", node.Name, size, time.Since(deadline.Add(-within)).Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("hatest: %s: cluster size %q state %q after %v, want %d Synced", node.Name, sz, state, within, size)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// WaitApplied waits until node has applied every write set that any live
// node of g had committed when WaitApplied was called (wsrep_last_committed
// is the cluster-wide sequence number of a node's last committed write
// set; a node applies remote write sets after they were certified, so a
// read there can lag behind commits made on the others). It fails t after
// within, naming the sequence numbers.
func (g *Galera) WaitApplied(t testing.TB, node *Node, within time.Duration) {
	t.Helper()
	lastCommitted := func(n *Node) (int64, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var name string
		var seq int64
		err := n.Admin().QueryRowContext(ctx, "SHOW GLOBAL STATUS LIKE 'wsrep_last_committed'").Scan(&name, &seq)
		return seq, err
	}
	var target int64
	for _, n := range g.Nodes {
		if !n.Alive() {
			continue
		}
		seq, err := lastCommitted(n)
		if err != nil {
			t.Fatalf("hatest: %s: wsrep_last_committed: %v", n.Name, err)
		}
		target = max(target, seq)
	}
	start := time.Now()
	for {
		seq, err := lastCommitted(node)
		if err == nil && seq >= target {
			t.Logf("hatest: %s applied the cluster's write sets up to %d after %v", node.Name, target, time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Since(start) > within {
			t.Fatalf("hatest: %s: wsrep_last_committed %d (%v) after %v, want %d, the highest of the cluster's nodes", node.Name, seq, err, within, target)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
