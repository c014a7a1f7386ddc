// Package hatest is the harness of txlock's high-availability tests: it
// starts throwaway MariaDB topologies (a primary and its replicas, async or
// semi-sync; a Galera cluster) in temporary directories on free ports, kills
// and promotes their servers, and relays clients through a TCP relay that the test
// switches from a dead primary to the promoted one, so that one *gorm.DB
// follows the failover the way a service behind a proxy or a VIP does.
//
// The tests that use it are opt-in: they run only with TXLOCK_HA=1
// (`make test-ha`), and each server they start is torn down when the test
// ends, or killed by the kernel if the test process dies.
package hatest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	osuser "os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql" // the driver of the admin pools
	"github.com/txlock/txlock/internal/testdb"
)

// EnvVar is the variable that enables the HA tests.
const EnvVar = "TXLOCK_HA"

// Enabled reports whether the HA tests were asked for (TXLOCK_HA=1).
func Enabled() bool { return os.Getenv(EnvVar) == "1" }

// SkipUnlessEnabled skips t unless TXLOCK_HA=1, and when mariadbd is not
// installed.
func SkipUnlessEnabled(t testing.TB) {
	t.Helper()
	if !Enabled() {
		t.Skip("HA test: opt-in, run `make test-ha` (TXLOCK_HA=1); it starts throwaway MariaDB replication topologies")
	}
	if _, err := os.Stat(mariadbd); err != nil {
		t.Skipf("HA test: %s is not installed (apt-get install mariadb-server)", mariadbd)
	}
}

const (
	mariadbd     = "/usr/sbin/mariadbd"
	installDB    = "mariadb-install-db"
	startTimeout = Ceiling // a Galera joiner answers only after its state transfer
	stopTimeout  = 30 * time.Second
)

// A Node is one throwaway mariadbd: root without password over TCP on
// 127.0.0.1:Port, the database test, and an unprivileged account app
// (password app, all privileges on test.* only: no SUPER, no READ ONLY
// ADMIN) once the primary has created it.
type Node struct {
	Name     string
	ServerID int
	Port     int
	Dir      string
	SemiSync bool

	args []string
	cred *syscall.Credential // nil: run as the test process's user

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	admin   *sql.DB
}

// NodeOptions configures StartNode.
type NodeOptions struct {
	ServerID int
	ReadOnly bool
	// SemiSync enables semi-sync: the master side on a node that starts
	// as primary, the slave side on a replica (ReadOnly). Enabling the
	// master side on a replica would make its SQL thread wait for acks of
	// replicas it does not have (log_slave_updates): a 10 s stall, then a
	// silent fall back to async. Promote turns the master side on.
	SemiSync bool
	// Galera: no binary log options, and the server runs as the mysql
	// user (rsync SST fails as root); Extra carries the wsrep options.
	Galera bool
	Extra  []string // more mariadbd arguments
}

// StartNode installs a data directory in a new temporary directory and
// starts mariadbd on it with binary logging (GTID strict mode,
// log_slave_updates, so that any node can be promoted), and removes it when
// t ends.
func StartNode(t testing.TB, name string, o NodeOptions) *Node {
	t.Helper()
	n, err := startNode(name, o)
	if err != nil {
		t.Fatalf("hatest: starting %s: %v", name, err)
	}
	t.Cleanup(n.Close)
	return n
}

func startNode(name string, o NodeOptions) (*Node, error) {
	dir, err := os.MkdirTemp("/tmp", "txlock-ha-"+name+"-")
	if err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "data")
	inst := []string{
		"--no-defaults", "--datadir=" + data, "--tmpdir=" + dir,
		"--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve",
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "root"
		if o.Galera {
			user = "mysql"
			if err := chownTree(dir, "mysql"); err != nil {
				_ = os.RemoveAll(dir)
				return nil, err
			}
		}
		inst = append(inst, "--user="+user)
	}
	if out, err := exec.Command(installDB, inst...).CombinedOutput(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("%s: %w: %s", installDB, err, testdb.LastLines(out, 10))
	}
	// Not binlogged: a replica's own GTID would break strict mode.
	init := "SET SESSION sql_log_bin=0;\nCREATE DATABASE IF NOT EXISTS test;\n"
	if o.Galera {
		init = "CREATE DATABASE IF NOT EXISTS test;\n"
	}
	if err := os.WriteFile(filepath.Join(dir, "init.sql"), []byte(init), 0o644); err != nil {
		return nil, err
	}
	n := &Node{Name: name, ServerID: o.ServerID, Dir: dir}
	n.args = []string{
		"--no-defaults",
		"--datadir=" + data,
		"--tmpdir=" + dir,
		"--bind-address=127.0.0.1",
		"--socket=" + filepath.Join(dir, "mysqld.sock"),
		"--pid-file=" + filepath.Join(dir, "mariadbd.pid"),
		"--log-error=" + filepath.Join(dir, "mariadbd.err"),
		"--init-file=" + filepath.Join(dir, "init.sql"),
		"--skip-name-resolve",
		"--max-connections=500",
		"--server-id=" + strconv.Itoa(o.ServerID),
		"--binlog-format=ROW",
		"--innodb-buffer-pool-size=32M",
	}
	if !o.Galera {
		n.args = append(n.args,
			"--log-bin="+filepath.Join(dir, "binlog"),
			"--log-slave-updates=1",
			"--gtid-strict-mode=1",
		)
	}
	if o.ReadOnly {
		n.args = append(n.args, "--read-only=1")
	}
	switch {
	case o.SemiSync && o.ReadOnly:
		n.args = append(n.args, "--rpl-semi-sync-slave-enabled=1")
	case o.SemiSync:
		n.args = append(n.args, "--rpl-semi-sync-master-enabled=1")
	}
	n.SemiSync = o.SemiSync
	switch user {
	case "root":
		n.args = append(n.args, "--user=root")
	case "mysql":
		// Started as mysql rather than with --user=mysql: the kernel clears
		// the parent-death signal when a process changes its own uid.
		u, err := osuser.Lookup("mysql")
		if err != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		n.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	n.args = append(n.args, o.Extra...)
	var lastErr error
	for range 3 {
		port, err := testdb.FreePort()
		if err != nil {
			return nil, err
		}
		n.Port = port
		if lastErr = n.launch(); lastErr == nil {
			return n, nil
		}
	}
	_ = os.RemoveAll(dir)
	return nil, lastErr
}

func (n *Node) launch() error {
	args := append(append([]string(nil), n.args...), "--port="+strconv.Itoa(n.Port))
	cmd := exec.Command(mariadbd, args...)
	cmd.Dir = n.Dir
	// The kernel kills the server if the test process dies without cleanup.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: n.cred}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	n.mu.Lock()
	n.cmd, n.exited = cmd, exited
	n.mu.Unlock()
	go func() {
		err := cmd.Wait()
		n.mu.Lock()
		n.waitErr = err
		n.mu.Unlock()
		close(exited)
	}()
	db, err := sql.Open("mysql", n.DSN("root", ""))
	if err != nil {
		return err
	}
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = db.PingContext(ctx)
		cancel()
		if err == nil {
			n.mu.Lock()
			n.admin = db
			n.mu.Unlock()
			return nil
		}
		select {
		case <-exited:
			_ = db.Close()
			log, _ := os.ReadFile(filepath.Join(n.Dir, "mariadbd.err"))
			return fmt.Errorf("mariadbd %s exited: %s", n.Name, testdb.LastLines(log, 10))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = db.Close()
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("mariadbd %s did not answer within %v: %w", n.Name, startTimeout, err)
		}
	}
}

// Addr returns "127.0.0.1:port".
func (n *Node) Addr() string { return "127.0.0.1:" + strconv.Itoa(n.Port) }

// DSN returns a go-sql-driver DSN of the node's database test for user.
func (n *Node) DSN(user, password string) string {
	cred := user
	if password != "" {
		cred += ":" + password
	}
	return fmt.Sprintf("%s@tcp(%s)/test?parseTime=true", cred, n.Addr())
}

// Admin returns the node's root pool.
func (n *Node) Admin() *sql.DB {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.admin
}

// Exec runs statements as root, failing t on error or when one does not
// return within Ceiling (STOP SLAVE waits for the event group being
// applied, which under load can take long).
func (n *Node) Exec(t testing.TB, stmts ...string) {
	t.Helper()
	for _, s := range stmts {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), Ceiling)
		_, err := n.Admin().ExecContext(ctx, s)
		cancel()
		if err != nil {
			t.Fatalf("hatest: %s: %s: %v (after %v)", n.Name, s, err, time.Since(start).Round(time.Millisecond))
		}
	}
}

// QueryString returns the first column of the first row of q, as root.
func (n *Node) QueryString(ctx context.Context, q string, args ...any) (string, error) {
	var s sql.NullString
	err := n.Admin().QueryRowContext(ctx, q, args...).Scan(&s)
	return s.String, err
}

// Alive reports whether the server process runs.
func (n *Node) Alive() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// Kill crashes the server with SIGKILL and waits until it has exited.
func (n *Node) Kill() error {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	if cmd == nil {
		return errors.New("hatest: " + n.Name + " was never started")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	<-exited
	return nil
}

// Close stops the server (SIGTERM, SIGKILL after a timeout) and removes its
// directory.
func (n *Node) Close() {
	n.mu.Lock()
	cmd, exited, admin := n.cmd, n.exited, n.admin
	n.admin = nil
	n.mu.Unlock()
	if admin != nil {
		_ = admin.Close()
	}
	if cmd != nil {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(stopTimeout):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	_ = os.RemoveAll(n.Dir)
}

// chownTree gives dir and everything under it to user.
func chownTree(dir, user string) error {
	out, err := exec.Command("chown", "-R", user+":", dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("chown %s: %w: %s", dir, err, out)
	}
	return nil
}
