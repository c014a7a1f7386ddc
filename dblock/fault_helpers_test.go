package dblock_test

// Helpers of the fault-injection tests (fault_*_test.go, torture_test.go):
// pools on other addresses than the test server's (a relay, a throwaway
// server), child processes that hold locks, and small statistics.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/faultproxy"
	"github.com/txlock/txlock/internal/testdb"
)

// faultOpen opens gorm on dsn the way testdb.Open does (parseTime, silent
// logger, the DSN kept in the dialector so that a Locker's side pool uses
// the same address), closes it when the test ends, and checks that no
// connection is left in use.
func faultOpen(t *testing.T, dsn string) *gorm.DB {
	t.Helper()
	db := testdb.OpenDSN(t, dsn)
	testdb.NoLeaks(t, db)
	return db
}

// faultRelay starts a relay to the test server and returns it with a gorm
// pool through it. The relay is closed (every connection reset) when the
// test ends, before the pool's leak check, so that a connection stuck on a
// blackhole is given back. It skips the test when the server is not
// reached over TCP.
func faultRelay(t *testing.T) (*faultproxy.Proxy, *gorm.DB) {
	t.Helper()
	dsn, err := testdb.DSN()
	if err != nil {
		t.Fatal(err)
	}
	target, err := faultproxy.TargetOf(dsn)
	if err != nil {
		t.Skipf("the test server is not reached over TCP (%v): no relay", err)
	}
	p, err := faultproxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	relayed, err := p.DSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	db := faultOpen(t, relayed)
	t.Cleanup(func() { _ = p.Close() }) // runs before faultOpen's cleanups
	return p, db
}

// faultLocker returns a Locker on db and table, closed when the test ends.
func faultLocker(t *testing.T, db *gorm.DB, table string, opts ...dblock.Option) *dblock.Locker {
	t.Helper()
	l, err := dblock.New(db, append([]dblock.Option{dblock.Table(table)}, opts...)...)
	if err != nil {
		t.Fatalf("dblock.New: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// median returns the median of ds (the mean of the two middle ones for an
// even count).
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// roundMs rounds ds for logs.
func roundMs(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(10 * time.Microsecond)
	}
	return out
}

// closedWithin reports whether ch is closed within d, and when.
func closedWithin(ch <-chan struct{}, d time.Duration) (time.Time, bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return time.Now(), true
	case <-t.C:
		return time.Time{}, false
	}
}

// isClosed reports whether ch is closed now.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Child processes: the test binary re-executed with -test.run=^TestFaultChild$
// and the mode in $TXLOCK_FAULT_CHILD.
const (
	envFaultChild = "TXLOCK_FAULT_CHILD" // the child's mode
	envFaultTable = "TXLOCK_FAULT_TABLE" // the lock table
	envFaultKey   = "TXLOCK_FAULT_KEY"   // the Resource key to hold
	envFaultArg   = "TXLOCK_FAULT_ARG"   // mode-specific
)

// child is a running child process of a fault test.
type child struct {
	cmd    *exec.Cmd
	lines  chan string // the child's stdout, line by line; closed at EOF
	stderr *lockedBuffer
	waited chan struct{}
	err    error // Wait's result, once waited is closed

	mu  sync.Mutex
	out []string // every stdout line, for failure messages
}

// startChild re-executes the test binary as a child in mode, with env
// added to the environment. The child is killed when the test ends, if it
// still runs.
func startChild(t *testing.T, mode string, env ...string) *child {
	t.Helper()
	dsn, err := testdb.DSN()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestFaultChild$", "-test.count=1", "-test.timeout=10m")
	cmd.Env = append(os.Environ(), envFaultChild+"="+mode, testdb.EnvDSN+"="+dsn)
	cmd.Env = append(cmd.Env, env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, lines: make(chan string, 1024), stderr: &lockedBuffer{}, waited: make(chan struct{})}
	cmd.Stderr = c.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting a child process: %v", err)
	}
	go func() {
		// Read everything before Wait: Wait closes the pipe.
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			c.mu.Lock()
			c.out = append(c.out, line)
			c.mu.Unlock()
			select {
			case c.lines <- line:
			default: // nobody reads: keep it in out only
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		close(c.lines)
		c.err = cmd.Wait()
		close(c.waited)
	}()
	t.Cleanup(func() {
		select {
		case <-c.waited:
		default:
			_ = cmd.Process.Kill()
			<-c.waited
		}
	})
	return c
}

// output returns what the child printed, for failure messages.
func (c *child) output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.out, "\n") + "\n" + c.stderr.String()
}

// expect waits for a line of the child starting with prefix and returns
// the rest of it.
func (c *child) expect(t *testing.T, prefix string, d time.Duration) string {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case line, ok := <-c.lines:
			if !ok {
				<-c.waited
				t.Fatalf("child exited (%v) before printing %q:\n%s", c.err, prefix, c.output())
			}
			if rest, found := strings.CutPrefix(line, prefix); found {
				return strings.TrimSpace(rest)
			}
		case <-timer.C:
			t.Fatalf("child did not print %q within %v:\n%s", prefix, d, c.output())
		}
	}
}

// kill sends SIGKILL and returns when it was sent; the process is reaped
// in the background (wait for it with reap).
func (c *child) kill(t *testing.T) time.Time {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL: %v", err)
	}
	return time.Now()
}

// reap waits until the child has exited.
func (c *child) reap(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case <-c.waited:
	case <-time.After(d):
		t.Fatalf("child still running %v after it was killed", d)
	}
}

// TestFaultChild is not a test: it is the body of a child process of the
// fault tests, which re-execute the test binary with
// -test.run=^TestFaultChild$ and $TXLOCK_FAULT_CHILD set to a mode.
func TestFaultChild(t *testing.T) {
	mode := os.Getenv(envFaultChild)
	if mode == "" {
		t.Skip("child process of the fault tests")
	}
	switch mode {
	case "hold":
		faultChildHold(t)
	case "torture":
		tortureChild(t)
	case "campaign":
		electionChild(t)
	default:
		t.Fatalf("unknown child mode %q", mode)
	}
}

// faultChildLocker returns a Locker of a child process on the table named
// by the environment, and the key it names.
func faultChildLocker(t *testing.T) (*dblock.Locker, string) {
	table, key := os.Getenv(envFaultTable), os.Getenv(envFaultKey)
	if table == "" || key == "" {
		t.Fatalf("bad child environment: table %q key %q", table, key)
	}
	l, err := dblock.New(testdb.Open(t), dblock.Table(table))
	if err != nil {
		t.Fatal(err)
	}
	return l, key
}

// faultChildHold takes the key named by the environment (with Fencing
// when $TXLOCK_FAULT_ARG is "fencing"), prints "HELD <token>" and sleeps
// until it is killed (at most a minute).
func faultChildHold(t *testing.T) {
	l, key := faultChildLocker(t)
	defer l.Close()
	var opts []dblock.LockOption
	if os.Getenv(envFaultArg) == "fencing" {
		opts = append(opts, dblock.Fencing())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k, err := l.Lock(ctx, dblock.Resource(key), opts...)
	if err != nil {
		t.Fatalf("child Lock: %v", err)
	}
	defer k.Rollback()
	fmt.Println("HELD " + strconv.FormatInt(k.Token(), 10))
	select {
	case <-ctx.Done():
	case <-k.Lost():
		t.Fatalf("child lost its lock: %v", k.Err())
	}
}
