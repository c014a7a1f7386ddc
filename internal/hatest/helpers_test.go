package hatest_test

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/hatest"
	"github.com/txlock/txlock/internal/testdb"
	"github.com/txlock/txlock/migrations"
)

// openGorm opens gorm on dsn, the DSN kept in the dialector so that the
// Locker's side pool goes the same way (through the relay), and closes it
// when t ends.
func openGorm(t *testing.T, dsn string) *gorm.DB {
	t.Helper()
	cfg, err := gomysql.ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Timeout = 2 * time.Second // a dead primary must fail fast
	return testdb.OpenDSN(t, cfg.FormatDSN())
}

func newLocker(t *testing.T, db *gorm.DB, opts ...dblock.Option) *dblock.Locker {
	t.Helper()
	l, err := dblock.New(db, opts...)
	if err != nil {
		t.Fatalf("dblock.New: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// setupSchema creates the lock table and a business table on the primary
// and waits until the replica has them.
func setupSchema(t *testing.T, p *hatest.Pair) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hatest.Ceiling)
	defer cancel()
	if _, err := migrations.Up(ctx, p.Primary.Admin()); err != nil {
		t.Fatalf("migrations.Up: %v", err)
	}
	p.Primary.Exec(t,
		"CREATE TABLE IF NOT EXISTS test.ha_business (id INT PRIMARY KEY, v BIGINT NOT NULL)",
		"INSERT INTO test.ha_business VALUES (1, 0)",
	)
	hatest.CatchUp(t, p.Primary, p.Replica, hatest.Ceiling)
}

// mysqlErr returns the server error number err wraps, or 0.
func mysqlErr(err error) uint16 {
	var me *gomysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}

// acquireCommit retries Lock and Commit of key on l until one succeeds or
// within passes, and returns how many attempts it took.
func acquireCommit(ctx context.Context, l *dblock.Locker, key dblock.Key, within time.Duration) (int, error) {
	deadline := time.Now().Add(within)
	var last error
	for n := 1; ; n++ {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		lk, err := l.Lock(actx, key, dblock.WaitTimeout(time.Second))
		if err == nil {
			err = lk.Tx().Exec("UPDATE ha_business SET v = v + 1 WHERE id = 1").Error
			if err == nil {
				err = lk.Commit()
			} else {
				_ = lk.Rollback()
			}
		}
		cancel()
		if err == nil {
			return n, nil
		}
		last = err
		if time.Now().After(deadline) {
			return n, last
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// buildTxlock builds the txlock command into t's temp dir.
func buildTxlock(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "txlock")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/txlock/txlock/cmd/txlock").CombinedOutput(); err != nil {
		t.Fatalf("building txlock: %v\n%s", err, out)
	}
	return bin
}

// runDoctor runs "txlock doctor" of bin against dsn and returns its
// output; err is non-nil when it exits non-zero.
func runDoctor(t *testing.T, bin, dsn string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hatest.Ceiling)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, append([]string{"doctor", "--dsn", dsn}, args...)...).CombinedOutput()
	return string(out), err
}

// waitLockWaiters waits until n sessions of the account app on node run
// a locking read (queued acquisitions; PROCESSLIST is live), and fails t
// after hatest.Ceiling.
func waitLockWaiters(t *testing.T, node *hatest.Node, n int) {
	t.Helper()
	start := time.Now()
	var got string
	var err error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		got, err = node.QueryString(ctx, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'app' AND INFO LIKE '%FOR UPDATE%'")
		cancel()
		if err == nil && got == strconv.Itoa(n) {
			t.Logf("%d acquisitions queued on %s after %v", n, node.Name, time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Since(start) > hatest.Ceiling {
			t.Fatalf("%s: %s locking reads of app running after %v, want %d (%v)", node.Name, got, hatest.Ceiling, n, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// lostAfter reports, once, how long after since the holder's Lost()
// closed, or -1 if it did not within.
func lostAfter(holder *dblock.Lock, since time.Time, within time.Duration) <-chan time.Duration {
	ch := make(chan time.Duration, 1)
	go func() {
		select {
		case <-holder.Lost():
			ch <- time.Since(since)
		case <-time.After(within):
			ch <- -1
		}
	}()
	return ch
}
