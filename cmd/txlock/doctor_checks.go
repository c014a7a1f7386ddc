package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/txlock/txlock/internal/serverinfo"
)

// checks are the lines of the doctor's report.
type checks []check

// add appends a check.
func (cs *checks) add(name, status, msg, advice string) {
	*cs = append(*cs, check{Name: name, Status: status, Message: msg, Advice: advice})
}

// minLockWait is the innodb_lock_wait_timeout below which doctor warns
// that blocking lock calls give up early.
const minLockWait = 5

// serverChecks judges the server from its version and global variables
// (lower-case names; a variable missing from vars does not exist on the
// server), and on Galera its wsrep_* status variables.
func serverChecks(srv serverInfo, vars map[string]string, mode serverinfo.GaleraMode) []check {
	var cs checks
	cs.version(srv)
	cs.isolation(vars)
	cs.snapshotIsolation(srv, vars)
	cs.lockWaits(vars)
	cs.autocommit(vars)
	cs.silentPartitions(srv, vars)
	cs.deadlocks(vars)
	cs.replica(vars)
	cs.galera(vars, mode)
	cs.performanceSchema(srv, vars)
	return cs
}

// version checks that txlock supports the server.
func (cs *checks) version(srv serverInfo) {
	if err := srv.Supported(); err != nil {
		cs.add("version", statusFail, err.Error(), "upgrade the server (txlock relies on SKIP LOCKED, NOWAIT and the lock behaviour it was measured on)")
	} else {
		cs.add("version", statusOK, srv.String(), "")
	}
}

// isolation checks the default isolation level of new sessions: MariaDB
// before 11.1 has tx_isolation, MySQL 8 only transaction_isolation.
func (cs *checks) isolation(vars map[string]string) {
	iso, ok := vars["transaction_isolation"]
	if !ok {
		iso, ok = vars["tx_isolation"]
	}
	switch iso = strings.ToUpper(strings.ReplaceAll(iso, " ", "-")); {
	case !ok:
		cs.add("isolation", statusWarn, "neither @@transaction_isolation nor @@tx_isolation found", "check the server's default isolation level: txlock expects REPEATABLE READ or READ COMMITTED")
	case iso == "REPEATABLE-READ" || iso == "READ-COMMITTED":
		cs.add("isolation", statusOK, iso+" (default for new sessions)", "")
	case iso == "SERIALIZABLE":
		cs.add("isolation", statusWarn, iso+": every plain read in a lock's transaction takes a shared lock", "expect more lock waits and deadlocks; REPEATABLE READ (the default) or READ COMMITTED is enough with txlock")
	default:
		cs.add("isolation", statusWarn, iso+": a lock's transaction can read other transactions' uncommitted writes", "use REPEATABLE READ (the default) or READ COMMITTED")
	}
}

// snapshotIsolation checks that MariaDB can make the stale write of a
// joined transaction fail.
func (cs *checks) snapshotIsolation(srv serverInfo, vars map[string]string) {
	if srv.MariaDB {
		if v, ok := vars["innodb_snapshot_isolation"]; ok {
			cs.add("snapshot_isolation", statusOK, "innodb_snapshot_isolation available (global "+v+"): txlock turns it on in a joined transaction that read before its lock, so a stale write fails instead of losing an update", "")
		} else {
			cs.add("snapshot_isolation", statusWarn, "innodb_snapshot_isolation is missing (MariaDB before 10.6.18/10.11.8): a transaction that reads, then joins a lock (LockTx, Do inside WithTx) can compute from stale reads",
				"take locks first in a transaction, or upgrade MariaDB")
		}
	}
}

// lockWaits checks how long a lock call without WaitTimeout or deadline
// waits, and what a lock-wait timeout ends.
func (cs *checks) lockWaits(vars map[string]string) {
	if v, ok := vars["innodb_lock_wait_timeout"]; ok {
		n, _ := strconv.ParseInt(v, 10, 64)
		switch {
		case n <= 0:
			cs.add("innodb_lock_wait_timeout", statusFail, v+": a lock call without WaitTimeout or context deadline gives up at once when the key is held: Lock and Do fail like TryLock",
				"SET GLOBAL innodb_lock_wait_timeout = 50 (the default), or set it in the services' DSN (innodb_lock_wait_timeout=50)")
		case n < minLockWait:
			cs.add("innodb_lock_wait_timeout", statusWarn, humanSeconds(n)+": a lock call without WaitTimeout or context deadline gives up after that, even on a key held only briefly by others",
				"if that is not meant, SET GLOBAL innodb_lock_wait_timeout = 50 (the default), or give lock calls a WaitTimeout or deadline")
		case n > 120:
			cs.add("innodb_lock_wait_timeout", statusWarn, humanSeconds(n)+": a waiter without WaitTimeout or context deadline queues that long",
				"give lock calls a WaitTimeout or deadline, or lower it: SET GLOBAL innodb_lock_wait_timeout = 50")
		default:
			cs.add("innodb_lock_wait_timeout", statusOK, humanSeconds(n)+": the longest wait of a lock call without WaitTimeout or deadline", "")
		}
	}
	if v, ok := vars["max_statement_time"]; ok {
		if f, _ := strconv.ParseFloat(v, 64); f > 0 {
			cs.add("max_statement_time", statusWarn, v+" s: every statement, a lock wait included, is ended after that (error 1969): a lock call without WaitTimeout or context deadline gives up then, whatever innodb_lock_wait_timeout says",
				"SET GLOBAL max_statement_time = 0, or give lock calls a WaitTimeout or deadline (txlock then sets it per statement)")
		} else {
			cs.add("max_statement_time", statusOK, "0 (off): statements are not cut short", "")
		}
	}
	if serverinfo.IsOn(vars["innodb_rollback_on_timeout"]) {
		cs.add("innodb_rollback_on_timeout", statusWarn, "ON: a lock-wait timeout (error 1205, which MariaDB also returns for TryLock and NoWait) rolls back the whole transaction, not only the statement: "+
			"in a transaction of your own (LockTx, Do inside WithTx) a failed TryLock or wait also undoes the writes and the locks taken before it, and the statements after it run in autocommit",
			"take locks first in such transactions and end the transaction on ErrNotAcquired, or turn the option off in the server configuration (it needs a restart)")
	} else if _, ok := vars["innodb_rollback_on_timeout"]; ok {
		cs.add("innodb_rollback_on_timeout", statusOK, "OFF: a lock-wait timeout ends only its statement; the transaction and its other locks stay", "")
	}
}

// autocommit checks that new sessions run in autocommit, as the writes
// txlock makes beside the lock transaction need.
func (cs *checks) autocommit(vars map[string]string) {
	if v, ok := vars["autocommit"]; ok {
		if serverinfo.IsOn(v) {
			cs.add("autocommit", statusOK, "ON (default for new sessions)", "")
		} else {
			cs.add("autocommit", statusFail, "OFF: a new session's first statement opens a transaction that stays open until COMMIT; "+
				"the key rows and fencing counters that txlock writes beside the lock transaction (in autocommit) would stay uncommitted, their row locks held",
				"SET GLOBAL autocommit = 1, or set autocommit=1 in every service's DSN")
		}
	}
}

// silentPartitions checks how long a holder cut off without a FIN or RST
// keeps its lock.
func (cs *checks) silentPartitions(srv serverInfo, vars map[string]string) {
	if v, ok := vars["wait_timeout"]; ok {
		n, _ := strconv.ParseInt(v, 10, 64)
		if n >= 3600 {
			cs.add("wait_timeout", statusWarn, humanSeconds(n)+": locks taken with LockTx or WithTx in your own transactions, whose holder is cut off without a FIN or RST (a partition, a frozen VM), stay held that long (the transactions Do and Lock open are bounded by their Lease instead)",
				"lower it for the services' sessions, e.g. the DSN parameter wait_timeout=60 (keep the pool's SetConnMaxIdleTime below it), or SET GLOBAL wait_timeout = 600")
		} else {
			cs.add("wait_timeout", statusOK, humanSeconds(n)+": the longest a silently cut-off holder keeps its lock", "")
		}
	}
	if srv.MariaDB {
		if v, ok := vars["idle_transaction_timeout"]; ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			if n == 0 {
				cs.add("idle_transaction_timeout", statusOK, "supported (global 0, off): txlock sets it to the Lease on the sessions of the transactions it opens", "for locks in your own transactions (LockTx, WithTx), set it per session, e.g. DSN parameter idle_transaction_timeout=60")
			} else {
				cs.add("idle_transaction_timeout", statusOK, "supported, global "+humanSeconds(n)+": a transaction idle that long is ended and its locks released", "")
			}
		} else {
			cs.add("idle_transaction_timeout", statusWarn, "idle_transaction_timeout is missing", "a holder idle in its transaction is only bounded by wait_timeout: upgrade to MariaDB 10.3+")
		}
	} else {
		cs.add("idle_transaction_timeout", statusWarn, "MySQL has no idle_transaction_timeout: a holder idle in its transaction is bounded only by wait_timeout and TCP keepalive",
			"keep wait_timeout low for the lock connections (DSN parameter wait_timeout=60)")
	}
}

// deadlocks checks that deadlocks are detected.
func (cs *checks) deadlocks(vars map[string]string) {
	if v, ok := vars["innodb_deadlock_detect"]; ok {
		if serverinfo.IsOn(v) {
			cs.add("innodb_deadlock_detect", statusOK, "ON: deadlocks are broken at once (ErrDeadlock, retried by the Retry option)", "")
		} else {
			cs.add("innodb_deadlock_detect", statusWarn, "OFF: a deadlock between lock holders lasts until innodb_lock_wait_timeout and surfaces as ErrNotAcquired, not ErrDeadlock",
				"SET GLOBAL innodb_deadlock_detect = ON, or keep innodb_lock_wait_timeout short and take keys in one order (DoMulti)")
		}
	}
}

// replica checks that the server is writable, not a replica.
func (cs *checks) replica(vars map[string]string) {
	var ro []string
	for _, n := range []string{"read_only", "super_read_only", "innodb_read_only"} {
		if serverinfo.IsOn(vars[n]) {
			ro = append(ro, n)
		}
	}
	if len(ro) > 0 {
		cs.add("read_only", statusFail, strings.Join(ro, ", ")+" is ON: this server is a replica or read-only; key rows cannot be created and locks would not be seen by writers on the primary",
			"point the DSN at the primary")
	} else {
		cs.add("read_only", statusOK, "writable (read_only OFF)", "")
	}
}

// galera checks, on a Galera node, the mode the services declared and
// the node's state.
func (cs *checks) galera(vars map[string]string, mode serverinfo.GaleraMode) {
	switch {
	case !serverinfo.IsOn(vars["wsrep_on"]):
		cs.add("galera", statusOK, "not a Galera node (wsrep_on OFF or absent)", "")
	case mode == serverinfo.GaleraSingleWriter:
		cs.add("galera", statusOK, "Galera node; --galera-single-writer: all lockers use one node at a time (dblock.GaleraSingleWriter)", "")
	case mode == serverinfo.GaleraMultiWriter:
		cs.add("galera", statusOK, "Galera node; --galera-multi-writer: holders on several nodes write their lock row, and certification commits at most one of two overlapping holders (dblock.GaleraMultiWriter); their work outside the database is not protected", "")
	default:
		cs.add("galera", statusWarn, "Galera node (wsrep_on ON): row locks are local to a node, so dblock.New requires dblock.GaleraSingleWriter() (every locker through one node) or dblock.GaleraMultiWriter() (holders on several nodes; the later of two overlapping holders fails at COMMIT)",
			"pick one (docs/HA.md) and run doctor with --galera-single-writer or --galera-multi-writer")
	}
	if serverinfo.IsOn(vars["wsrep_on"]) {
		cluster, ready, state := vars["wsrep_cluster_status"], vars["wsrep_ready"], vars["wsrep_local_state_comment"]
		desc := fmt.Sprintf("wsrep_cluster_status %s, wsrep_ready %s, state %s, cluster size %s", cluster, ready, state, vars["wsrep_cluster_size"])
		switch {
		case cluster != "Primary" || !serverinfo.IsOn(ready):
			cs.add("galera_state", statusFail, desc+": this node is not in the cluster's primary component (partitioned or joining); acquisitions fail with ErrNotPrimary, holders lose their locks",
				"send lock traffic to a synced node of the primary component; check the cluster's network and wsrep_cluster_address")
		case state != "Synced":
			cs.add("galera_state", statusWarn, desc+": the node is not synced (a donor or catching up)", "keep lock traffic off it until it is Synced (a Galera health check does)")
		default:
			cs.add("galera_state", statusOK, desc, "")
		}
	}
}

// performanceSchema checks MySQL's performance_schema, which
// "txlock locks" reads.
func (cs *checks) performanceSchema(srv serverInfo, vars map[string]string) {
	if !srv.MariaDB {
		if serverinfo.IsOn(vars["performance_schema"]) {
			cs.add("performance_schema", statusOK, "ON: txlock locks can list every row lock (data_locks)", "")
		} else {
			cs.add("performance_schema", statusWarn, "OFF: txlock locks and release cannot see row locks on MySQL", "set performance_schema=ON in the server configuration (needs a restart)")
		}
	}
}
