package testdb

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ErrNoMariadbd is returned by StartThrowaway when mariadbd is not
// installed.
var ErrNoMariadbd = errors.New("testdb: mariadbd is not installed")

// MariadbdInstalled reports whether a throwaway server can be started.
func MariadbdInstalled() bool { return findMariadbd() != "" }

// A Throwaway is a mariadbd of a test's own, in a temporary directory, that
// the test can crash, stop and start again on the same port and data
// directory (fault injection). Root logs in without password; the database
// test exists. It is separate from the process's test server of DSN.
type Throwaway struct {
	bin  string
	dir  string
	port int
	opts []string // extra mariadbd options, kept across restarts

	mu  sync.Mutex
	srv *server // nil while stopped
}

// StartThrowaway installs and starts a new server. opts are extra mariadbd
// command-line options, "--name=value" each (for server settings that
// cannot be changed at run time, such as
// "--innodb-rollback-on-timeout=ON"); they are kept across Start. Options
// that testdb sets itself (data directory, port, socket, ...) are refused.
// It returns ErrNoMariadbd when mariadbd is not installed.
func StartThrowaway(opts ...string) (*Throwaway, error) {
	if err := checkServerOptions(opts); err != nil {
		return nil, err
	}
	bin := findMariadbd()
	if bin == "" {
		return nil, ErrNoMariadbd
	}
	opts = slices.Clone(opts)
	srv, err := startServer(bin, "txlock-throwaway-", opts)
	if err != nil {
		return nil, fmt.Errorf("testdb: starting a throwaway server: %w", err)
	}
	return &Throwaway{bin: bin, dir: srv.dir, port: srv.port, opts: opts, srv: srv}, nil
}

// ThrowawayFor starts a throwaway server for t with the extra mariadbd
// options opts (see StartThrowaway), skipping t when mariadbd is not
// installed, and removes it when t ends.
func ThrowawayFor(t testing.TB, opts ...string) *Throwaway {
	t.Helper()
	s, err := StartThrowaway(opts...)
	if errors.Is(err, ErrNoMariadbd) {
		t.Skip("mariadbd is not installed (looked in PATH and /usr/sbin): cannot start a throwaway server to restart")
	}
	if err != nil {
		t.Fatalf("testdb: starting a throwaway server: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("testdb: removing the throwaway server: %v", err)
		}
	})
	return s
}

// DSN returns the server's DSN, root@tcp(127.0.0.1:port)/test; it stays
// the same across restarts.
func (s *Throwaway) DSN() string { return fmt.Sprintf("root@tcp(127.0.0.1:%d)/test", s.port) }

// Addr returns the server's TCP address, 127.0.0.1:port.
func (s *Throwaway) Addr() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

// PID returns the server's process id, or 0 while it is stopped.
func (s *Throwaway) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		return 0
	}
	return s.srv.cmd.Process.Pid
}

// Kill crashes the server with SIGKILL and waits until it has exited.
func (s *Throwaway) Kill() error { return s.halt(syscall.SIGKILL) }

// Stop shuts the server down with SIGTERM (a clean shutdown: clients get
// an error) and waits until it has exited, killing it after the usual stop
// timeout.
func (s *Throwaway) Stop() error { return s.halt(syscall.SIGTERM) }

func (s *Throwaway) halt(sig syscall.Signal) error {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv == nil {
		return errors.New("testdb: the throwaway server is not running")
	}
	select {
	case <-srv.exited:
		return fmt.Errorf("testdb: the throwaway server had exited already: %v", srv.waitErr)
	default:
	}
	if err := srv.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("testdb: %v: %w", sig, err)
	}
	select {
	case <-srv.exited:
		return nil
	case <-time.After(stopTimeout):
		_ = srv.cmd.Process.Kill()
		<-srv.exited
		return fmt.Errorf("testdb: mariadbd did not stop within %v of %v: killed", stopTimeout, sig)
	}
}

// Start starts the server again, on the same port and data directory,
// after Kill or Stop, and waits until it answers (after crash recovery).
func (s *Throwaway) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return errors.New("testdb: the throwaway server is running")
	}
	var err error
	for range startTries {
		// The port is ours: another process would have to grab it in the
		// instant between the stop and now. Retry in case the kernel still
		// holds it.
		var srv *server
		if srv, err = launch(s.bin, s.dir, s.port, s.opts); err == nil {
			s.srv = srv
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("testdb: restarting the throwaway server: %w", err)
}

// Close stops the server if it runs and removes its directory.
func (s *Throwaway) Close() error {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		return srv.stop() // removes the directory
	}
	return os.RemoveAll(s.dir)
}
