package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/serverinfo"
	"github.com/txlock/txlock/internal/testdb"
	"github.com/txlock/txlock/migrations"
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
		"OK version MariaDB 10.",
		"OK isolation ",
		"OK read_only ",
		"OK galera ",
		fmt.Sprintf("OK table %s present (InnoDB), at migration %d (latest)", listed(migrations.Tables(f.table)), migrations.Latest()),
		" innodb_lock_wait_timeout ",
		" innodb_rollback_on_timeout ",
		"OK autocommit ON",
		"OK hierarchy off: keys are independent",
		"idle_transaction_timeout",
		"0 FAIL",
	} {
		if !strings.Contains(squeeze(out), want) {
			t.Errorf("doctor output lacks %q", want)
		}
	}
	if !strings.Contains(squeeze(out), "WARN wait_timeout") && !strings.Contains(squeeze(out), "OK wait_timeout") {
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
	if code != 1 || !strings.Contains(squeeze(out), "FAIL table") || !strings.Contains(out, "txlock migrate up --table "+f.table+"_missing") ||
		!strings.Contains(errOut, "1 check(s) failed") {
		t.Errorf("missing table: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}

	// The two Galera modes exclude each other.
	_, errOut, code = f.exitCode(t, "", "doctor", "--galera-single-writer", "--galera-multi-writer")
	if code == 0 || !strings.Contains(errOut, "galera-multi-writer") {
		t.Errorf("doctor with both Galera modes: exit %d, stderr %q", code, errOut)
	}
}

// squeeze collapses the runs of blanks that align doctor's columns.
func squeeze(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.Join(strings.Fields(l), " ")
	}
	return strings.Join(lines, "\n")
}

// testServer returns the serverInfo of a server whose VERSION() and
// @@version_comment are version and comment.
func testServer(t *testing.T, version, comment string) serverInfo {
	t.Helper()
	v, err := serverinfo.Identify(version, comment)
	if err != nil {
		t.Fatal(err)
	}
	return serverInfo{Version: v}
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
	mysql := testServer(t, "8.0.36", "MySQL Community Server - GPL")
	mysqlVars := map[string]string{
		"transaction_isolation": "REPEATABLE-READ", "innodb_lock_wait_timeout": "50",
		"wait_timeout": "60", "innodb_deadlock_detect": "OFF", "read_only": "OFF",
		"super_read_only": "ON", "performance_schema": "OFF",
	}
	c := serverChecks(mysql, mysqlVars, serverinfo.GaleraUnset)
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

	maria := testServer(t, "10.6.5-MariaDB", "")
	mariaVars := map[string]string{
		"tx_isolation": "SERIALIZABLE", "innodb_lock_wait_timeout": "3600", "wait_timeout": "28800",
		"idle_transaction_timeout": "0", "read_only": "OFF", "wsrep_on": "ON",
	}
	c = serverChecks(maria, mariaVars, serverinfo.GaleraUnset)
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
	for _, mode := range []serverinfo.GaleraMode{serverinfo.GaleraSingleWriter, serverinfo.GaleraMultiWriter} {
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
		if got := status(serverChecks(maria, vars, serverinfo.GaleraSingleWriter), "galera_state"); got != c.want {
			t.Errorf("Galera node %s/%s/%s: galera_state %s, want %s", c.cluster, c.ready, c.state, got, c.want)
		}
	}
	if got := status(serverChecks(mysql, mysqlVars, serverinfo.GaleraUnset), "galera_state"); got != "absent" {
		t.Errorf("not Galera: galera_state %s, want absent", got)
	}
	old := testServer(t, "10.5.2-MariaDB", "")
	if got := status(serverChecks(old, mariaVars, serverinfo.GaleraUnset), "version"); got != statusFail {
		t.Errorf("MariaDB 10.5: %s", got)
	}
	if got := status(serverChecks(testServer(t, "5.7.44", ""), mysqlVars, serverinfo.GaleraUnset), "version"); got != statusFail {
		t.Errorf("MySQL 5.7: %s", got)
	}
}

// TestBinaryDoctorFlagsLockWaitSettings runs doctor against a server of its
// own whose globals would break blocking lock calls: with
// innodb_lock_wait_timeout=0 a Lock on a held key fails at once (doctor
// used to say OK), and with autocommit=0 the key rows that txlock creates
// beside the lock transaction stay uncommitted.
func TestBinaryDoctorFlagsLockWaitSettings(t *testing.T) {
	t.Parallel()
	srv := testdb.ThrowawayFor(t)
	db := testdb.OpenDSN(t, srv.DSN())
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := migrations.Up(ctx, sqlDB); err != nil {
		t.Fatal(err)
	}
	if _, err := sqlDB.Exec("SET GLOBAL innodb_lock_wait_timeout = 0"); err != nil {
		t.Fatal(err)
	}
	// What doctor warns of: a Lock without WaitTimeout or deadline, on a
	// held key, on sessions opened from now on.
	l1, l2 := newLockerOn(t, srv.DSN()), newLockerOn(t, srv.DSN())
	held, err := l1.Lock(ctx, dblock.Resource("doctor:held"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = l2.Lock(ctx, dblock.Resource("doctor:held"))
	t.Logf("innodb_lock_wait_timeout=0: a blocking Lock on a held key returned after %v: %v", time.Since(start), err)
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Errorf("blocking Lock with innodb_lock_wait_timeout=0 = %v, want ErrNotAcquired at once", err)
	}
	if err := held.Rollback(); err != nil {
		t.Fatal(err)
	}

	bin := buildBinary(t)
	doctor := func() (string, int) {
		t.Helper()
		out, errOut, code, err := runBin(bin, "", "doctor", "--dsn", srv.DSN())
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("txlock doctor (exit %d):\n%s%s", code, out, errOut)
		return squeeze(out), code
	}
	out, code := doctor()
	if code != 1 || !strings.Contains(out, "FAIL innodb_lock_wait_timeout 0: a lock call without WaitTimeout or context deadline gives up at once") {
		t.Errorf("innodb_lock_wait_timeout=0: exit %d, want 1 and a FAIL line", code)
	}

	for _, set := range []string{"SET GLOBAL innodb_lock_wait_timeout = 2", "SET GLOBAL autocommit = 0"} {
		if _, err := sqlDB.Exec(set); err != nil {
			t.Fatal(err)
		}
	}
	out, code = doctor()
	if code != 1 || !strings.Contains(out, "WARN innodb_lock_wait_timeout 2 s: a lock call without WaitTimeout or context deadline gives up after that") ||
		!strings.Contains(out, "FAIL autocommit OFF") {
		t.Errorf("innodb_lock_wait_timeout=2, autocommit=0: exit %d, want 1, a WARN and an autocommit FAIL", code)
	}
	for _, set := range []string{"SET GLOBAL innodb_lock_wait_timeout = 50", "SET GLOBAL autocommit = 1"} {
		if _, err := sqlDB.Exec(set); err != nil {
			t.Fatal(err)
		}
	}
	if out, code = doctor(); code != 0 || !strings.Contains(out, "OK innodb_lock_wait_timeout 50 s") {
		t.Errorf("defaults again: exit %d", code)
	}
}

// newLockerOn returns a Locker on a server of dsn, closed when t ends.
func newLockerOn(t *testing.T, dsn string) *dblock.Locker {
	t.Helper()
	l, err := dblock.New(testdb.OpenDSN(t, dsn))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// TestServerChecksLockWaits judges the lock-wait settings from variables.
func TestServerChecksLockWaits(t *testing.T) {
	maria := testServer(t, "10.11.19-MariaDB", "")
	base := map[string]string{
		"tx_isolation": "READ-COMMITTED", "innodb_lock_wait_timeout": "50", "wait_timeout": "60",
		"idle_transaction_timeout": "0", "read_only": "OFF", "innodb_rollback_on_timeout": "OFF",
		"autocommit": "ON", "max_statement_time": "0.000000",
	}
	for _, tc := range []struct {
		name, value, check, want string
	}{
		{"tx_isolation", "READ-COMMITTED", "isolation", statusOK},
		{"innodb_lock_wait_timeout", "50", "innodb_lock_wait_timeout", statusOK},
		{"innodb_lock_wait_timeout", "0", "innodb_lock_wait_timeout", statusFail},
		{"innodb_lock_wait_timeout", "1", "innodb_lock_wait_timeout", statusWarn},
		{"innodb_lock_wait_timeout", "5", "innodb_lock_wait_timeout", statusOK},
		{"innodb_lock_wait_timeout", "3600", "innodb_lock_wait_timeout", statusWarn},
		{"innodb_rollback_on_timeout", "ON", "innodb_rollback_on_timeout", statusWarn},
		{"innodb_rollback_on_timeout", "OFF", "innodb_rollback_on_timeout", statusOK},
		{"autocommit", "OFF", "autocommit", statusFail},
		{"autocommit", "0", "autocommit", statusFail},
		{"autocommit", "ON", "autocommit", statusOK},
		{"max_statement_time", "10.000000", "max_statement_time", statusWarn},
		{"max_statement_time", "0.000000", "max_statement_time", statusOK},
	} {
		vars := maps.Clone(base)
		vars[tc.name] = tc.value
		got := "absent"
		for _, c := range serverChecks(maria, vars, serverinfo.GaleraUnset) {
			if c.Name == tc.check {
				got = c.Status
			}
		}
		if got != tc.want {
			t.Errorf("%s=%s: %s is %s, want %s", tc.name, tc.value, tc.check, got, tc.want)
		}
	}
}
