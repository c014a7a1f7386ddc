package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/txlock/txlock/internal/testdb"
	"github.com/txlock/txlock/migrations"
	"github.com/txlock/txlock/schema"
)

// binPath is the txlock binary that TestMain builds once for every test
// that runs it; buildErr says why there is none.
var binPath, buildErr = "", errors.New("not built")

func TestMain(m *testing.M) {
	binPath, buildErr = buildOnce()
	testdb.Main(m)
}

// buildOnce compiles the command into a temporary directory. Under go test
// that directory is made inside go test's own work directory (next to the
// test binary), which go test removes when it is done.
func buildOnce() (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("no go tool to build the binary: %w", err)
	}
	parent := ""
	if exe, err := os.Executable(); err == nil && strings.Contains(filepath.ToSlash(exe), "/go-build") {
		parent = filepath.Dir(exe)
	}
	dir, err := os.MkdirTemp(parent, "txlock-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "txlock")
	out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, out)
	}
	return bin, nil
}

// buildBinary returns the binary TestMain built.
func buildBinary(t *testing.T) string {
	t.Helper()
	if errors.Is(buildErr, exec.ErrNotFound) {
		t.Skipf("building txlock: %v", buildErr)
	}
	if buildErr != nil {
		t.Fatalf("building txlock: %v", buildErr)
	}
	return binPath
}

// txlock runs the binary with args and an environment without
// $DBLOCK_DSN unless env sets it, and returns its stdout, stderr and error.
func txlock(t *testing.T, bin string, env []string, args ...string) (string, string, error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envDSN+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

func TestBinaryMigrate(t *testing.T) {
	dsn, err := testdb.DSN()
	if err != nil {
		t.Fatal(err)
	}
	bin := buildBinary(t)
	sqlDB, err := testdb.Open(t).DB()
	if err != nil {
		t.Fatal(err)
	}
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	table := "cli_" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		for _, tb := range []string{schema.FenceTable(table), table, migrations.VersionTable(table)} {
			if _, err := sqlDB.Exec("DROP TABLE IF EXISTS `" + tb + "`"); err != nil {
				t.Errorf("dropping %s: %v", tb, err)
			}
		}
	})
	exists := func() bool {
		var n int
		if err := sqlDB.QueryRow(`SELECT COUNT(*) FROM information_schema.tables
			WHERE table_schema = DATABASE() AND table_name IN (?, ?)`, table, schema.FenceTable(table)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 2
	}
	flags := []string{"--dsn", dsn, "--table", table}
	run := func(args ...string) string {
		t.Helper()
		out, errOut, err := txlock(t, bin, nil, append(args, flags...)...)
		if err != nil || errOut != "" {
			t.Fatalf("txlock %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
		}
		return out
	}
	wantIn := func(out string, wants ...string) {
		t.Helper()
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("output lacks %q:\n%s", w, out)
			}
		}
	}

	wantIn(run("migrate", "status"), "pending", "00001_create_tb_lock.sql")
	if exists() {
		t.Fatal("status created the tables")
	}
	latest := migrations.Latest()
	wantIn(run("migrate", "up"), fmt.Sprintf("applied %d migration(s), now at version %d", latest, latest))
	if !exists() {
		t.Fatal("migrate up did not create the tables")
	}
	wantIn(run("migrate", "up"), fmt.Sprintf("up to date at version %d", latest))
	wantIn(run("migrate", "status"), "applied", "00001_create_tb_lock.sql")
	st, err := migrations.Status(context.Background(), sqlDB, migrations.Table(table))
	if err != nil || int64(len(st)) != latest || !st[len(st)-1].Applied {
		t.Errorf("after migrate up, Status = %+v, %v", st, err)
	}

	// $DBLOCK_DSN is used when --dsn is absent.
	out, errOut, err := txlock(t, bin, []string{envDSN + "=" + dsn}, "migrate", "status", "--table", table)
	if err != nil {
		t.Fatalf("status with $%s: %v: %s", envDSN, err, errOut)
	}
	wantIn(out, "applied")

	// down warns on stderr, and --yes answers its question.
	out, errOut, err = txlock(t, bin, nil, append([]string{"migrate", "down", "--yes"}, flags...)...)
	if err != nil {
		t.Fatalf("migrate down --yes: %v\nstdout: %s\nstderr: %s", err, out, errOut)
	}
	wantIn(out, fmt.Sprintf("rolled back %d migration(s)", latest))
	wantIn(errOut, "Stop every service that uses them first")
	if exists() {
		t.Fatal("migrate down left the tables")
	}
	wantIn(run("migrate", "down"), "nothing to roll back")
	wantIn(run("migrate", "status"), "pending")
}

func TestBinaryNeverPrintsThePassword(t *testing.T) {
	bin := buildBinary(t)
	const secret = "s3cr3t-pw"
	dsn := "app:" + secret + "@tcp(127.0.0.1:1)/test"
	for _, tc := range []struct {
		env  []string
		args []string
	}{
		{nil, []string{"migrate", "status", "--dsn", dsn}},
		{[]string{envDSN + "=" + dsn}, []string{"migrate", "up"}},
		{[]string{envDSN + "=" + dsn}, []string{"--help"}},
		{[]string{envDSN + "=" + dsn}, []string{"migrate", "status", "--help"}},
		{nil, []string{"locks", "--dsn", dsn}},
		{[]string{envDSN + "=" + dsn}, []string{"locks", "--json"}},
		{nil, []string{"gc", "--older-than", "1h", "--dsn", dsn}},
		{[]string{envDSN + "=" + dsn}, []string{"doctor", "--json"}},
		{nil, []string{"release", "--key", "resource=x", "--force", "--dsn", dsn}},
		{[]string{envDSN + "=" + dsn}, []string{"release", "--help"}},
	} {
		out, errOut, _ := txlock(t, bin, tc.env, tc.args...)
		if strings.Contains(out+errOut, secret) {
			t.Errorf("txlock %v printed the password:\n%s%s", tc.args, out, errOut)
		}
	}
}

func TestHelpHasExamples(t *testing.T) {
	root, _ := newRootCmd(func(string) string { return "" })
	pending := []*cobra.Command{root}
	for len(pending) > 0 {
		c := pending[0]
		pending = append(pending[1:], c.Commands()...)
		if c.Name() == "help" || c.Name() == "completion" {
			continue
		}
		if strings.TrimSpace(c.Example) == "" {
			t.Errorf("%q has no Example", c.CommandPath())
		}
	}
}

func TestRunRejectsBadTableBeforeConnecting(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"migrate", "up", "--table", "1bad", "--dsn", "root@tcp(127.0.0.1:1)/test"},
		func(string) string { return "" }, &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "--table: invalid table name") {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
}

func TestResolvedDSN(t *testing.T) {
	env := map[string]string{}
	o := &rootOptions{getenv: func(k string) string { return env[k] }}
	if got := o.resolvedDSN(); got != defaultDSN {
		t.Errorf("no flag, no env: %q", got)
	}
	env[envDSN] = "a@tcp(h:1)/d"
	if got := o.resolvedDSN(); got != "a@tcp(h:1)/d" {
		t.Errorf("env: %q", got)
	}
	o.dsn = "b@tcp(h:2)/d"
	if got := o.resolvedDSN(); got != "b@tcp(h:2)/d" {
		t.Errorf("flag: %q", got)
	}
}
