package testdb

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
)

// Limits of the throwaway server's life cycle.
const (
	startTimeout = 30 * time.Second // install + start until it answers
	stopTimeout  = 30 * time.Second // SIGTERM until SIGKILL
	startTries   = 3                // a free port may be taken before mariadbd binds it
	maxSocketLen = 100              // sun_path holds 108 bytes
)

// server is a throwaway mariadbd in a temporary directory, with root
// without password on its own TCP port of 127.0.0.1.
type server struct {
	dir     string
	port    int
	dsn     string
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has exited
	waitErr error         // cmd.Wait's result, once exited is closed
}

// findMariadbd returns the path of mariadbd, or "" if it is not installed.
func findMariadbd() string {
	if p, err := exec.LookPath("mariadbd"); err == nil {
		return p
	}
	const debian = "/usr/sbin/mariadbd"
	if fi, err := os.Stat(debian); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		return debian
	}
	return ""
}

// findInstallDB returns the path of mariadb-install-db that goes with the
// server binary bin.
func findInstallDB(bin string) (string, error) {
	for _, name := range []string{"mariadb-install-db", "mysql_install_db"} {
		candidates := []string{
			filepath.Join(filepath.Dir(bin), name),
			filepath.Join(filepath.Dir(filepath.Dir(bin)), "bin", name),
			filepath.Join(filepath.Dir(filepath.Dir(bin)), "scripts", name),
		}
		for _, c := range candidates {
			if fi, err := os.Stat(c); err == nil && !fi.IsDir() {
				return c, nil
			}
		}
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("mariadb-install-db not found next to " + bin + " nor in PATH")
}

// startServer initialises a data directory in a new temporary directory
// named after prefix and starts bin on it, with the extra options opts
// (see checkServerOptions), waiting until it answers as root without
// password.
func startServer(bin, prefix string, opts []string) (*server, error) {
	if err := checkServerOptions(opts); err != nil {
		return nil, err
	}
	installDB, err := findInstallDB(bin)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, fmt.Errorf("temporary directory: %w", err)
	}
	if len(filepath.Join(dir, "mysqld.sock")) > maxSocketLen {
		// $TMPDIR is too deep for a unix socket path: use /tmp.
		_ = os.RemoveAll(dir)
		if dir, err = os.MkdirTemp("/tmp", prefix); err != nil {
			return nil, fmt.Errorf("temporary directory: %w", err)
		}
	}
	srv, err := initAndStart(bin, installDB, dir, opts)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return srv, nil
}

// asRoot reports whether the process runs as root: mariadbd then needs
// --user=root to agree to start.
func asRoot() bool { return os.Geteuid() == 0 }

// initAndStart installs the system tables in dir/data and starts the
// server, retrying with another port if the one chosen was taken. The
// installer's temporary files go to dir too: with the default (/tmp), two
// installs that run at once (tests of several packages in parallel) can
// collide on their temporary tables and fail ("Unknown table
// 'mysql.tmp_user_sys'").
func initAndStart(bin, installDB, dir string, opts []string) (*server, error) {
	data := filepath.Join(dir, "data")
	args := []string{
		"--no-defaults",
		"--datadir=" + data,
		"--tmpdir=" + dir,                          // concurrent installs would collide in /tmp
		"--auth-root-authentication-method=normal", // root without password
		"--skip-test-db",
		"--skip-name-resolve",
	}
	if asRoot() {
		args = append(args, "--user=root")
	}
	out, err := exec.Command(installDB, args...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %s", installDB, err, LastLines(out, 10))
	}
	initFile := filepath.Join(dir, "init.sql")
	if err := os.WriteFile(initFile, []byte("CREATE DATABASE IF NOT EXISTS test;\n"), 0o600); err != nil {
		return nil, fmt.Errorf("writing %s: %w", initFile, err)
	}
	var lastErr error
	for range startTries {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		srv, err := launch(bin, dir, port, opts)
		if err == nil {
			return srv, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// launch starts mariadbd on dir's data directory and TCP port port, with
// the extra options opts after the fixed ones, and waits until it answers.
func launch(bin, dir string, port int, opts []string) (*server, error) {
	logFile := filepath.Join(dir, "mariadbd.err")
	args := []string{
		"--no-defaults",
		"--datadir=" + filepath.Join(dir, "data"),
		"--tmpdir=" + dir,
		"--bind-address=127.0.0.1",
		"--port=" + strconv.Itoa(port),
		"--socket=" + filepath.Join(dir, "mysqld.sock"),
		"--pid-file=" + filepath.Join(dir, "mariadbd.pid"),
		"--log-error=" + logFile,
		"--init-file=" + filepath.Join(dir, "init.sql"),
		"--skip-name-resolve",
		"--max-connections=1000",
	}
	if asRoot() {
		args = append(args, "--user=root")
	}
	args = append(args, opts...)
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	setParentDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	srv := &server{
		dir:    dir,
		port:   port,
		dsn:    fmt.Sprintf("root@tcp(127.0.0.1:%d)/test", port),
		cmd:    cmd,
		exited: make(chan struct{}),
	}
	go func() {
		srv.waitErr = cmd.Wait()
		close(srv.exited)
	}()
	cfg, err := gomysql.ParseDSN(srv.dsn)
	if err != nil {
		_ = srv.stop()
		return nil, fmt.Errorf("parsing %s: %w", srv.dsn, err)
	}
	deadline := time.Now().Add(startTimeout)
	for {
		pingErr := ping(cfg)
		if pingErr == nil {
			return srv, nil
		}
		select {
		case <-srv.exited:
			log, _ := os.ReadFile(logFile)
			return nil, fmt.Errorf("%s exited (%v): %s", bin, srv.waitErr, LastLines(log, 10))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = srv.stop()
			return nil, fmt.Errorf("%s did not answer on %s within %v: %w", bin, srv.dsn, startTimeout, pingErr)
		}
	}
}

// stop shuts the server down (SIGTERM, then SIGKILL after stopTimeout) and
// removes its directory.
func (s *server) stop() error {
	var errs []error
	select {
	case <-s.exited:
	default:
		if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			errs = append(errs, fmt.Errorf("SIGTERM: %w", err))
		}
		select {
		case <-s.exited:
		case <-time.After(stopTimeout):
			errs = append(errs, fmt.Errorf("mariadbd did not stop within %v: killed", stopTimeout))
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
	}
	if err := os.RemoveAll(s.dir); err != nil {
		errs = append(errs, fmt.Errorf("removing %s: %w", s.dir, err))
	}
	return errors.Join(errs...)
}

// FreePort returns a TCP port of 127.0.0.1 that nothing listens on now.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// LastLines returns the last n lines of b, trimmed, for error messages.
func LastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(bytes.ToValidUTF8(b, nil))), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
