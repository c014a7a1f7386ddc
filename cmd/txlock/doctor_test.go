package main

import (
	"encoding/json"
	"maps"
	"strings"
	"testing"
)

func TestBinaryDoctor(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	out, errOut, code := f.exitCode(t, "", "doctor")
	t.Logf("txlock doctor:\n%s", out)
	if code != 0 || errOut != "" {
		t.Fatalf("doctor on the test server: exit %d, stderr %q\n%s", code, errOut, out)
	}
	// This server: MariaDB 10.11 with the default 8 h wait_timeout.
	for _, want := range []string{
		"OK    version                   MariaDB 10.",
		"OK    isolation ",
		"OK    read_only ",
		"OK    galera ",
		"OK    table                     " + f.table + " and " + f.table + "_fence present (InnoDB), at migration 1 (latest)",
		"idle_transaction_timeout",
		"innodb_lock_wait_timeout",
		"0 FAIL",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("doctor output lacks %q", want)
		}
	}
	if !strings.Contains(out, "WARN  wait_timeout") && !strings.Contains(out, "OK    wait_timeout") {
		t.Errorf("no wait_timeout line:\n%s", out)
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		if !strings.HasPrefix(l, "OK ") && !strings.HasPrefix(l, "WARN ") && !strings.HasPrefix(l, "FAIL ") && !strings.Contains(l, "check(s):") {
			t.Errorf("line without a status: %q", l)
		}
	}

	var rep doctorReport
	out, _, code = f.exitCode(t, "", "doctor", "--json")
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 0 {
		t.Fatalf("doctor --json: exit %d, %v\n%s", code, err, out)
	}
	if rep.Fails != 0 || len(rep.Checks) < 10 || !strings.HasPrefix(rep.Server, "MariaDB ") {
		t.Errorf("doctor --json = %+v", rep)
	}

	// A missing table is a real problem: exit 1.
	out, errOut, code, err := runBin(buildBinary(t), "", "doctor", "--dsn", f.dsn, "--table", f.table+"_missing")
	if err != nil {
		t.Fatal(err)
	}
	if code != 1 || !strings.Contains(out, "FAIL  table") || !strings.Contains(out, "txlock migrate up --table "+f.table+"_missing") ||
		!strings.Contains(errOut, "1 check(s) failed") {
		t.Errorf("missing table: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}

	// The two Galera modes exclude each other.
	_, errOut, code = f.exitCode(t, "", "doctor", "--galera-single-writer", "--galera-multi-writer")
	if code == 0 || !strings.Contains(errOut, "galera-multi-writer") {
		t.Errorf("doctor with both Galera modes: exit %d, stderr %q", code, errOut)
	}
}

func TestServerChecks(t *testing.T) {
	status := func(checks []check, name string) string {
		for _, c := range checks {
			if c.Name == name {
				return c.Status
			}
		}
		return "absent"
	}
	mysql := serverInfo{Version: "8.0.36", Major: 8, Minor: 0, Patch: 36}
	mysqlVars := map[string]string{
		"transaction_isolation": "REPEATABLE-READ", "innodb_lock_wait_timeout": "50",
		"wait_timeout": "60", "innodb_deadlock_detect": "OFF", "read_only": "OFF",
		"super_read_only": "ON", "performance_schema": "OFF",
	}
	c := serverChecks(mysql, mysqlVars, galeraUnset)
	for name, want := range map[string]string{
		"version":                  statusOK,
		"isolation":                statusOK, // from transaction_isolation: MySQL has no tx_isolation
		"wait_timeout":             statusOK,
		"idle_transaction_timeout": statusWarn, // MySQL has none
		"innodb_deadlock_detect":   statusWarn,
		"read_only":                statusFail, // super_read_only: a replica
		"galera":                   statusOK,
		"performance_schema":       statusWarn,
		"snapshot_isolation":       "absent", // MariaDB only
	} {
		if got := status(c, name); got != want {
			t.Errorf("MySQL %s: %s, want %s", name, got, want)
		}
	}

	maria := serverInfo{Version: "10.6.5-MariaDB", MariaDB: true, Major: 10, Minor: 6, Patch: 5}
	mariaVars := map[string]string{
		"tx_isolation": "SERIALIZABLE", "innodb_lock_wait_timeout": "3600", "wait_timeout": "28800",
		"idle_transaction_timeout": "0", "read_only": "OFF", "wsrep_on": "ON",
	}
	c = serverChecks(maria, mariaVars, galeraUnset)
	for name, want := range map[string]string{
		"version":                  statusOK,
		"isolation":                statusWarn,
		"snapshot_isolation":       statusWarn, // 10.6.5 lacks innodb_snapshot_isolation
		"innodb_lock_wait_timeout": statusWarn,
		"wait_timeout":             statusWarn,
		"idle_transaction_timeout": statusOK,
		"innodb_deadlock_detect":   "absent",
		"read_only":                statusOK,
		"galera":                   statusWarn,
		"performance_schema":       "absent",
	} {
		if got := status(c, name); got != want {
			t.Errorf("MariaDB %s: %s, want %s", name, got, want)
		}
	}
	for _, mode := range []galeraMode{galeraSingle, galeraMulti} {
		if got := status(serverChecks(maria, mariaVars, mode), "galera"); got != statusOK {
			t.Errorf("Galera with mode %d: %s", mode, got)
		}
	}
	for _, c := range []struct {
		cluster, ready, state, want string
	}{
		{"Primary", "ON", "Synced", statusOK},
		{"Primary", "ON", "Donor/Desynced", statusWarn},
		{"non-Primary", "OFF", "Initialized", statusFail}, // partitioned away
		{"Primary", "OFF", "Joining", statusFail},
		{"", "", "", statusFail}, // status not readable
	} {
		vars := maps.Clone(mariaVars)
		vars["wsrep_cluster_status"], vars["wsrep_ready"], vars["wsrep_local_state_comment"], vars["wsrep_cluster_size"] = c.cluster, c.ready, c.state, "3"
		if got := status(serverChecks(maria, vars, galeraSingle), "galera_state"); got != c.want {
			t.Errorf("Galera node %s/%s/%s: galera_state %s, want %s", c.cluster, c.ready, c.state, got, c.want)
		}
	}
	if got := status(serverChecks(mysql, mysqlVars, galeraUnset), "galera_state"); got != "absent" {
		t.Errorf("not Galera: galera_state %s, want absent", got)
	}
	old := serverInfo{Version: "10.5.2-MariaDB", MariaDB: true, Major: 10, Minor: 5}
	if got := status(serverChecks(old, mariaVars, galeraUnset), "version"); got != statusFail {
		t.Errorf("MariaDB 10.5: %s", got)
	}
	if got := status(serverChecks(serverInfo{Version: "5.7.44", Major: 5, Minor: 7}, mysqlVars, galeraUnset), "version"); got != statusFail {
		t.Errorf("MySQL 5.7: %s", got)
	}
}
