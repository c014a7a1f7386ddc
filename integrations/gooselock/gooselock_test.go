package gooselock

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
	"github.com/pressly/goose/v3/lock/locktesting"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/migrations"
)

// goose's own conformance suite: of 5 Lockers racing, one holds while the
// others' waits run out (the winner holds for twice the wait, a sleep of
// the suite's, and all must be done within the wait plus 5 s). A wait of
// 2 s leaves the winner 2 s to get the lock, and 3 s to get it and let it
// go, on a loaded machine.
func TestGooseConcurrentLocking(t *testing.T) {
	t.Parallel()
	e := setup(t)
	locktesting.TestConcurrentLocking(t, e.db, func(t *testing.T) lock.Locker {
		return e.locker(t)
	}, 2*time.Second)
}

// goose's own conformance suite: of 5 providers running Up at once, one
// applies every migration and the others none.
func TestGooseProviderLocking(t *testing.T) {
	t.Parallel()
	e := setup(t)
	fsys := e.gooseMigrations(t, 3)
	locktesting.TestProviderLocking(t, func(t *testing.T) *goose.Provider {
		return e.provider(t, fsys, e.locker(t))
	})
}

// gooseMigrations returns n goose migrations creating tables named after
// the test's lock table, dropped when the test ends.
func (e *env) gooseMigrations(t *testing.T, n int) fstest.MapFS {
	t.Helper()
	fsys := fstest.MapFS{}
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("%s_m%d", e.table, i)
		fsys[fmt.Sprintf("%05d_create_m%d.sql", i, i)] = &fstest.MapFile{Data: []byte(
			"-- +goose Up\nCREATE TABLE " + name + " (id INT PRIMARY KEY);\n" +
				"-- +goose Down\nDROP TABLE " + name + ";\n")}
		t.Cleanup(func() { _, _ = e.db.Exec("DROP TABLE IF EXISTS " + name) })
	}
	t.Cleanup(func() { _, _ = e.db.Exec("DROP TABLE IF EXISTS " + e.table + "_goose") })
	return fsys
}

// provider is a goose provider on the test's pool, with its own version
// table, locked by l.
func (e *env) provider(t *testing.T, fsys fstest.MapFS, l *Locker) *goose.Provider {
	t.Helper()
	p, err := goose.NewProvider(goose.DialectMySQL, e.db, fsys,
		goose.WithLocker(l), goose.WithTableName(e.table+"_goose"), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A second Locker, on another pool (another process, as far as the server
// can tell), does not get the lock while the first holds it, waits in the
// server's queue, and gets it when the first unlocks.
func TestSecondLockerBlocks(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	dbA, dbB := e.pool(t), e.pool(t)
	a := e.locker(t)
	if err := a.Lock(ctx, dbA); err != nil {
		t.Fatal(err)
	}

	short := e.locker(t, WaitTimeout(100*time.Millisecond))
	err := short.Lock(ctx, dbB)
	if !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("Lock while another Locker holds: %v, want dblock.ErrNotAcquired", err)
	}

	b := e.locker(t)
	got := make(chan error, 1)
	go func() { got <- b.Lock(ctx, dbB) }()
	e.waitForWaiter(t)
	select {
	case err := <-got:
		t.Fatalf("the second Lock returned while the first held the lock: %v", err)
	default:
	}
	if err := a.Unlock(ctx, dbA); err != nil {
		t.Fatal(err)
	}
	if err := await(t, got, "the second Lock after the first Unlock"); err != nil {
		t.Fatalf("the second Lock after the first Unlock: %v", err)
	}
	if err := b.Unlock(ctx, dbB); err != nil {
		t.Fatal(err)
	}
}

// A holder process killed with SIGKILL releases the lock: the server ends
// its session and rolls its transaction back.
func TestHolderProcessKilled(t *testing.T) {
	t.Parallel()
	e := setup(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+e.table)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "locked" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("child holder: %q, %v", line, err)
	}

	l := e.locker(t, WaitTimeout(100*time.Millisecond))
	if err := l.Lock(context.Background(), e.db); !errors.Is(err, dblock.ErrNotAcquired) {
		t.Fatalf("Lock while the child holds: %v, want dblock.ErrNotAcquired", err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	l = e.locker(t, WaitTimeout(opTimeout))
	if err := l.Lock(context.Background(), e.db); err != nil {
		t.Fatalf("Lock after the holder was killed: %v", err)
	}
	if err := l.Unlock(context.Background(), e.db); err != nil {
		t.Fatal(err)
	}
}

// recorder is a slog handler that hands each record's message to a
// channel.
type recorder struct{ msgs chan string }

func (r recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r recorder) Handle(_ context.Context, rec slog.Record) error {
	select {
	case r.msgs <- rec.Message:
	default:
	}
	return nil
}
func (r recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r recorder) WithGroup(string) slog.Handler      { return r }

// A holder whose connection the server kills releases the lock at once;
// the holder learns it: the loss is logged while it holds, and Unlock
// returns it.
func TestKilledConnectionLosesLock(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	rec := recorder{msgs: make(chan string, 16)}
	a := e.locker(t, Lease(2*time.Second), Logger(slog.New(rec)))
	if err := a.Lock(ctx, e.db); err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.Exec(fmt.Sprintf("KILL %d", connectionID(t, a))); err != nil {
		t.Fatal(err)
	}

	b := e.locker(t)
	dbB := e.pool(t)
	if err := b.Lock(ctx, dbB); err != nil {
		t.Fatalf("Lock after the holder's connection was killed: %v", err)
	}
	deadline := time.After(opTimeout)
	for lost := false; !lost; {
		select {
		case msg := <-rec.msgs:
			lost = strings.Contains(msg, "lost the migration lock")
		case <-deadline:
			t.Fatal("the holder logged no loss")
		}
	}
	err := a.Unlock(ctx, e.db)
	if !errors.Is(err, dblock.ErrLockLost) {
		t.Errorf("Unlock of a lost lock: %v, want dblock.ErrLockLost", err)
	}
	if err := b.Unlock(ctx, dbB); err != nil {
		t.Fatal(err)
	}
}

// The context of Lock bounds the wait only: once granted, the lock is held
// after that context ends, and Unlock with an expired or cancelled
// context releases it.
func TestUnlockWithEndedContext(t *testing.T) {
	t.Parallel()
	e := setup(t)
	other := e.pool(t)
	for _, name := range []string{"cancelled", "expired"} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			l := e.locker(t)
			if err := l.Lock(ctx, e.db); err != nil {
				t.Fatal(err)
			}
			cancel()
			probe := e.locker(t, WaitTimeout(100*time.Millisecond))
			if err := probe.Lock(context.Background(), other); !errors.Is(err, dblock.ErrNotAcquired) {
				t.Fatalf("Lock after the holder's Lock context ended: %v, want dblock.ErrNotAcquired (still held)", err)
			}
			uctx := ctx // cancelled
			if name == "expired" {
				var c context.CancelFunc
				uctx, c = context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
				defer c()
			}
			if err := l.Unlock(uctx, e.db); err != nil {
				t.Fatalf("Unlock with a %s context: %v", name, err)
			}
			if err := probe.Lock(context.Background(), other); err != nil {
				t.Fatalf("Lock after Unlock: %v", err)
			}
			if err := probe.Unlock(context.Background(), other); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Lock's context bounds the wait: its deadline (not acquired), its
// cancellation (at once, with the waiter gone from the server).
func TestLockContext(t *testing.T) {
	t.Parallel()
	e := setup(t)
	holder := e.locker(t)
	if err := holder.Lock(context.Background(), e.db); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := holder.Unlock(context.Background(), e.db); err != nil {
			t.Error(err)
		}
	}()
	other := e.pool(t)
	l := e.locker(t)

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	err := l.Lock(ctx, other)
	cancel()
	if !errors.Is(err, dblock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Lock until the context's deadline: %v, want dblock.ErrNotAcquired and context.DeadlineExceeded", err)
	}

	ctx, cancel = context.WithCancel(context.Background())
	got := make(chan error, 1)
	go func() { got <- l.Lock(ctx, other) }()
	e.waitForWaiter(t)
	cancel()
	if err := await(t, got, "Lock with its context cancelled"); !errors.Is(err, context.Canceled) {
		t.Errorf("Lock with its context cancelled: %v, want context.Canceled", err)
	}

	if err := l.Lock(ctx, other); !errors.Is(err, context.Canceled) {
		t.Errorf("Lock with a cancelled context: %v, want context.Canceled", err)
	}
}

// Unlock without a held lock is ErrNotLocked, and so is a second Unlock.
func TestUnlockWithoutLock(t *testing.T) {
	t.Parallel()
	e := setup(t)
	l := e.locker(t)
	if err := l.Unlock(context.Background(), e.db); !errors.Is(err, ErrNotLocked) {
		t.Errorf("Unlock without Lock: %v, want ErrNotLocked", err)
	}
	if err := l.Lock(context.Background(), e.db); err != nil {
		t.Fatal(err)
	}
	if err := l.Unlock(context.Background(), e.db); err != nil {
		t.Fatal(err)
	}
	if err := l.Unlock(context.Background(), e.db); !errors.Is(err, ErrNotLocked) {
		t.Errorf("second Unlock: %v, want ErrNotLocked", err)
	}
}

// A second Lock of the same Locker before Unlock waits for that Unlock,
// within the wait's bound, like goose's own table locker.
func TestLockTwice(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	l := e.locker(t)
	if err := l.Lock(ctx, e.db); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	err := l.Lock(short, e.db)
	cancel()
	if !errors.Is(err, dblock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Lock before Unlock, until a deadline: %v, want dblock.ErrNotAcquired and context.DeadlineExceeded", err)
	}
	mustContain(t, err, "Unlock it first")

	got := make(chan error, 1)
	go func() { got <- l.Lock(ctx, e.db) }()
	if err := l.Unlock(ctx, e.db); err != nil {
		t.Fatal(err)
	}
	if err := await(t, got, "the second Lock after Unlock"); err != nil {
		t.Fatalf("the second Lock after Unlock: %v", err)
	}
	if err := l.Unlock(ctx, e.db); err != nil {
		t.Fatal(err)
	}
}

// Lock creates txlock's lock table when it is missing, and goose then
// runs under the lock.
func TestMissingTableCreated(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	if _, err := migrations.Down(ctx, e.db, migrations.Table(e.table)); err != nil {
		t.Fatal(err)
	}
	p := e.provider(t, e.gooseMigrations(t, 1), e.locker(t))
	res, err := p.Up(ctx)
	if err != nil {
		t.Fatalf("goose Up with the lock table missing: %v", err)
	}
	if len(res) != 1 {
		t.Errorf("goose applied %d migrations, want 1", len(res))
	}
	st, err := migrations.Status(ctx, e.db, migrations.Table(e.table))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if !s.Applied {
			t.Errorf("lock table migration %s not applied after Lock", s.Source)
		}
	}
}

// Options are validated by New, which names the option at fault.
func TestNewValidatesOptions(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		opt  Option
		want string
	}{
		{Key(dblock.Key{}), "Key"},
		{Key(dblock.Key{Global: true, Resource: "x"}), "Key"},
		{WaitTimeout(0), "WaitTimeout"},
		{WaitTimeout(-time.Second), "WaitTimeout"},
		{Lease(500 * time.Millisecond), "Lease"},
		{Table(""), "Table"},
		{Table("no-dashes"), "Table"},
		{Logger(nil), "Logger"},
		{nil, "nil Option"},
	} {
		l, err := New(c.opt)
		if l != nil {
			t.Errorf("New accepted an invalid option (want an error naming %s)", c.want)
		}
		mustContain(t, err, "gooselock")
		mustContain(t, err, c.want)
	}
	if _, err := New(); err != nil {
		t.Errorf("New without options: %v", err)
	}
}

// Lock of a nil *sql.DB fails instead of panicking.
func TestLockNilDB(t *testing.T) {
	t.Parallel()
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Lock(context.Background(), nil); err == nil {
		t.Error("Lock(nil *sql.DB) succeeded")
	}
}
