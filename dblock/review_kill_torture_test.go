package dblock_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/testdb"
)

// reviewUser creates a database user of the test's own, so that a killer
// can end every connection of the test's pools (the caller's and the
// Locker's side pool, which the library opens from the same DSN) and
// none of the other tests sharing the server. It returns a DSN for it.
func reviewUser(t *testing.T) string {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "rv" + hex.EncodeToString(b[:])
	root := otherPool(t)
	for _, q := range []string{
		"CREATE USER '" + name + "'@'%' IDENTIFIED BY 'pw'",
		"CREATE USER '" + name + "'@'localhost' IDENTIFIED BY 'pw'",
		"GRANT ALL ON test.* TO '" + name + "'@'%'",
		"GRANT ALL ON test.* TO '" + name + "'@'localhost'",
	} {
		if err := root.Exec(q).Error; err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() {
		_ = root.Exec("DROP USER '" + name + "'@'%'").Error
		_ = root.Exec("DROP USER '" + name + "'@'localhost'").Error
	})
	return dsnWith(t, func(c *gomysql.Config) { c.User, c.Passwd = name, "pw" })
}

// reviewOp is one operation of the torture: what it reported, and (from
// the table) whether and from which counter value it committed.
type reviewOp struct {
	kind   string
	marker string
	err    error
	token  int64
}

// TestReviewKillTorture runs every public path concurrently on one hot key
// of one Locker (six goroutines, a pool of four), each a read-modify-write
// of a counter computed in Go, while a killer ends random connections of
// the test's user (KILL CONNECTION) every few milliseconds. Then it judges
// the committed effect: the committed runs read 0, 1, 2, ... each once (a
// value read twice is two holders at once, a lost update); every run that
// returned nil committed; none that returned an error other than
// ErrCommitUnknown did; fencing tokens grow with the order of the runs.
func TestReviewKillTorture(t *testing.T) {
	e := setup(t)
	reviewTorture(t, e, reviewUser(t), 20*time.Second, true, nil)
}

// TestReviewConfigTorture runs the same judge without the killer under the
// session settings services run with, set in the DSN of the caller's pool
// (and so of the Locker's side pool, which is opened from it): autocommit
// off, each isolation level, a short innodb_lock_wait_timeout, a global-like
// max_statement_time, a readTimeout, strict and ANSI sql_modes.
func TestReviewConfigTorture(t *testing.T) {
	e := setup(t)
	base := reviewUser(t)
	for _, c := range []struct {
		name   string
		params map[string]string
		rt     time.Duration
	}{
		{"autocommit=0", map[string]string{"autocommit": "0"}, 0},
		{"READ-COMMITTED", map[string]string{"tx_isolation": "'READ-COMMITTED'"}, 0},
		{"SERIALIZABLE", map[string]string{"tx_isolation": "'SERIALIZABLE'"}, 0},
		{"READ-UNCOMMITTED", map[string]string{"tx_isolation": "'READ-UNCOMMITTED'"}, 0},
		{"innodb_lock_wait_timeout=1", map[string]string{"innodb_lock_wait_timeout": "1"}, 0},
		{"max_statement_time=0.5", map[string]string{"max_statement_time": "0.5"}, 0},
		{"readTimeout=700ms", nil, 700 * time.Millisecond},
		{"sql_mode=ANSI,TRADITIONAL", map[string]string{"sql_mode": "'ANSI,TRADITIONAL'"}, 0},
		{"sql_mode=ORACLE", map[string]string{"sql_mode": "'ORACLE'"}, 0},
		{"innodb_snapshot_isolation=ON", map[string]string{"innodb_snapshot_isolation": "ON"}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := gomysql.ParseDSN(base)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Params == nil {
				cfg.Params = map[string]string{}
			}
			for k, v := range c.params {
				cfg.Params[k] = v
			}
			cfg.ReadTimeout = c.rt
			reviewTorture(t, e, cfg.FormatDSN(), 4*time.Second, false, nil)
		})
	}
}

// reviewTorture runs the judged workload on a pool of dsn for d, with or
// without the killer.
func reviewTorture(t *testing.T, e env, dsn string, runFor time.Duration, kill bool, disturb func(l *dblock.Locker, stop <-chan struct{})) {
	t.Helper()
	udb := testdb.OpenDSN(t, dsn)
	reviewTortureOn(t, e, udb, runFor, kill, disturb)
}

// reviewTortureOn is reviewTorture on the gorm handle udb.
func reviewTortureOn(t *testing.T, e env, udb *gorm.DB, runFor time.Duration, kill bool, disturb func(l *dblock.Locker, stop <-chan struct{})) {
	t.Helper()
	reviewTortureSized(t, e, udb, runFor, kill, disturb, 6, 4)
}

// reviewRunFor is how long a review torture of nominal length d runs: an
// eighth of it (at least 1 s) in `make test`, d with TXLOCK_TORTURE=1
// (`make torture`), or $TXLOCK_TORTURE_DURATION.
func reviewRunFor(t *testing.T, d time.Duration) time.Duration {
	if s := os.Getenv(envTortureDuration); s != "" {
		if v, err := time.ParseDuration(s); err == nil && v > 0 {
			return v
		}
	}
	if os.Getenv(envTorture) == "1" {
		return d
	}
	return max(d/8, time.Second)
}

// reviewTortureSized is reviewTortureOn with goroutines on a pool of
// poolSize connections.
func reviewTortureSized(t *testing.T, e env, udb *gorm.DB, runFor time.Duration, kill bool, disturb func(l *dblock.Locker, stop <-chan struct{}), goroutines, poolSize int) {
	t.Helper()
	if disturb == nil || runFor > 6*time.Second {
		// Not the Close torture, whose disturbance is timed within it.
		runFor = reviewRunFor(t, runFor)
	}
	testdb.NoLeaks(t, udb)
	usql, err := udb.DB()
	if err != nil {
		t.Fatal(err)
	}
	usql.SetMaxOpenConns(poolSize)
	l := faultLocker(t, udb, e.table)
	kv := e.kvTable(t)
	if err := put(e.db, kv, "ctr", 0); err != nil {
		t.Fatal(err)
	}
	var userName string
	if err := udb.Raw("SELECT SUBSTRING_INDEX(USER(), '@', 1)").Row().Scan(&userName); err != nil {
		t.Fatal(err)
	}
	key, key2 := dblock.Resource("hot"), dblock.Resource("hot2")
	ctx := ctxT(t)

	stop := make(chan struct{})
	var kills int
	var killerDone sync.WaitGroup
	if kill {
		killerDone.Add(1)
		go func() {
			defer killerDone.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Duration(mrand.IntN(30)) * time.Millisecond):
				}
				var ids []int64
				if err := e.db.Raw("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?", userName).Scan(&ids).Error; err != nil || len(ids) == 0 {
					continue
				}
				id := ids[mrand.IntN(len(ids))]
				if e.db.Exec(fmt.Sprintf("KILL CONNECTION %d", id)).Error == nil {
					kills++
				}
			}
		}()
	}

	if disturb != nil {
		killerDone.Add(1)
		go func() {
			defer killerDone.Done()
			disturb(l, stop)
		}()
	}
	kinds := []string{"Do", "DoFencing", "DoMulti", "NestedDo", "Lock", "LockTx", "TryLock", "LockTxReadFirst"}
	var mu sync.Mutex
	var ops []reviewOp
	var wg sync.WaitGroup
	deadline := time.Now().Add(runFor)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; time.Now().Before(deadline); n++ {
				kind := kinds[(g+n)%len(kinds)]
				op := reviewOp{kind: kind, marker: fmt.Sprintf("g%d-%d", g, n)}
				octx, cancel := context.WithTimeout(ctx, opTimeout)
				fn := func(fctx context.Context, tx *gorm.DB) error {
					if tok, ok := dblock.TokenFrom(fctx, key); ok {
						op.token = tok
					}
					return reviewRMW(tx, kv, op.marker)
				}
				switch kind {
				case "Do":
					op.err = l.Do(octx, key, fn, dblock.WaitTimeout(2*time.Second))
				case "DoFencing":
					op.err = l.Do(octx, key, fn, dblock.Fencing(), dblock.WaitTimeout(2*time.Second))
				case "DoMulti":
					op.err = l.DoMulti(octx, []dblock.Key{key2, key}, fn, dblock.WaitTimeout(2*time.Second))
				case "NestedDo":
					op.err = l.Do(octx, key2, func(fctx context.Context, _ *gorm.DB) error {
						return l.Do(fctx, key, fn)
					}, dblock.WaitTimeout(2*time.Second))
				case "Lock", "TryLock":
					var lk *dblock.Lock
					if kind == "Lock" {
						lk, op.err = l.Lock(octx, key, dblock.WaitTimeout(2*time.Second), dblock.Fencing())
					} else {
						lk, op.err = l.TryLock(octx, key, dblock.Fencing())
					}
					if op.err == nil {
						op.token = lk.Token()
						if op.err = reviewRMW(lk.Tx(), kv, op.marker); op.err == nil {
							op.err = lk.Commit()
						}
						_ = lk.Rollback()
					}
				case "LockTx", "LockTxReadFirst":
					tx := udb.WithContext(octx).Begin()
					if op.err = tx.Error; op.err == nil {
						if kind == "LockTxReadFirst" {
							var v int64
							op.err = tx.Raw("SELECT v FROM `" + kv + "` WHERE k = 'ctr'").Row().Scan(&v)
						}
						if op.err == nil {
							op.err = l.LockTx(octx, tx, key, dblock.WaitTimeout(2*time.Second))
						}
						if op.err == nil {
							if op.err = reviewRMW(tx, kv, op.marker); op.err == nil {
								op.err = tx.Commit().Error
								if op.err != nil {
									// The caller's own COMMIT: database/sql does not
									// tell a lost answer from a refusal.
									op.err = fmt.Errorf("%w: %w", dblock.ErrCommitUnknown, op.err)
								}
							}
						}
						tx.Rollback()
					}
				}
				cancel()
				mu.Lock()
				ops = append(ops, op)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(stop)
	killerDone.Wait()

	// Judge the committed effect.
	var rows []struct {
		K string
		V int64
	}
	if err := e.db.Raw("SELECT k, v FROM `" + kv + "` WHERE k <> 'ctr'").Scan(&rows).Error; err != nil {
		t.Fatal(err)
	}
	read := map[string]int64{}
	byValue := map[int64][]string{}
	for _, r := range rows {
		read[r.K] = r.V
		byValue[r.V] = append(byValue[r.V], r.K)
	}
	counter := get(t, e.db, kv, "ctr")
	t.Logf("%d runs, %d committed, counter %d, %d connections killed", len(ops), len(rows), counter, kills)
	if counter != int64(len(rows)) {
		t.Errorf("counter %d after %d committed runs: a lost update", counter, len(rows))
	}
	for v := int64(0); v < counter; v++ {
		if len(byValue[v]) != 1 {
			t.Errorf("value %d read by %d committed runs %v: two holders at once", v, len(byValue[v]), byValue[v])
		}
	}
	outcomes := map[string]int{}
	type fenced struct {
		v, token int64
		marker   string
	}
	var tokens []fenced
	for _, op := range ops {
		v, ok := read[op.marker]
		switch {
		case op.err == nil && !ok:
			t.Errorf("%s %s returned nil but did not commit", op.kind, op.marker)
		case op.err != nil && ok && !errors.Is(op.err, dblock.ErrCommitUnknown):
			t.Errorf("%s %s = %v, but it committed (read %d)", op.kind, op.marker, op.err, v)
		}
		outcome := "ok"
		if op.err != nil {
			outcome = reviewClass(op.err)
		}
		outcomes[op.kind+" "+outcome]++
		if ok && op.token > 0 {
			tokens = append(tokens, fenced{v, op.token, op.marker})
		}
	}
	sort.Slice(tokens, func(i, j int) bool { return tokens[i].v < tokens[j].v })
	for i := 1; i < len(tokens); i++ {
		if tokens[i].token <= tokens[i-1].token {
			t.Errorf("fencing: %s (read %d) has token %d, not above %s's (read %d) %d", tokens[i].marker, tokens[i].v, tokens[i].token,
				tokens[i-1].marker, tokens[i-1].v, tokens[i-1].token)
		}
	}
	var keys []string
	for k := range outcomes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "\n  %s: %d", k, outcomes[k])
	}
	t.Logf("outcomes:%s", b.String())
	t.Logf("%d committed runs carried a fencing token, in increasing order of the runs", len(tokens))
	if counter == 0 && disturb == nil {
		t.Errorf("nothing committed under this setting")
	}
}

// reviewClass names the outcome of an error for the log.
func reviewClass(err error) string {
	for _, c := range []struct {
		err  error
		name string
	}{
		{dblock.ErrCommitUnknown, "ErrCommitUnknown"}, {dblock.ErrLockLost, "ErrLockLost"}, {dblock.ErrDeadlock, "ErrDeadlock"},
		{dblock.ErrNotAcquired, "ErrNotAcquired"}, {dblock.ErrStaleSnapshot, "ErrStaleSnapshot"}, {dblock.ErrNoTransaction, "ErrNoTransaction"},
	} {
		if errors.Is(err, c.err) {
			return c.name
		}
	}
	s := err.Error()
	if len(s) > 60 {
		s = s[:60]
	}
	return "other(" + s + ")"
}

// TestReviewTruncateTorture runs the judged workload while the lock table
// is truncated every 200 ms (row ids are then reused by other keys), and
// rows are deleted behind the workload's back every 50 ms (a gc gone
// wrong, deleting live rows).
func TestReviewTruncateTorture(t *testing.T) {
	e := setup(t)
	var truncates, deletes int
	reviewTorture(t, e, reviewUser(t), 10*time.Second, false, func(_ *dblock.Locker, stop <-chan struct{}) {
		for i := 0; ; i++ {
			select {
			case <-stop:
				t.Logf("%d TRUNCATEs, %d DELETEs of the lock table", truncates, deletes)
				return
			case <-time.After(50 * time.Millisecond):
			}
			q, n := "DELETE FROM `"+e.table+"` WHERE id % 2 = 0", &deletes
			if i%4 == 0 {
				q, n = "TRUNCATE TABLE `"+e.table+"`", &truncates
			}
			if err := e.db.Exec(q).Error; err != nil {
				t.Logf("%s: %v", q, err)
				continue
			}
			*n++
		}
	})
}

// TestReviewCloseTorture closes the Locker halfway through the judged
// workload: acquisitions in flight must end with an honest outcome, and
// nothing may stay held or leak.
func TestReviewCloseTorture(t *testing.T) {
	e := setup(t)
	reviewTorture(t, e, reviewUser(t), 6*time.Second, false, func(l *dblock.Locker, stop <-chan struct{}) {
		select {
		case <-stop:
		case <-time.After(2 * time.Second):
			t.Logf("Close: %v", l.Close())
		}
	})
}

// TestReviewGormOptionsTorture runs the judged workload on gorm handles
// opened with the options services use: PrepareStmt, SkipDefaultTransaction,
// DefaultTransactionTimeout (above any run), and gorm on an existing
// *sql.DB with SideDB.
func TestReviewGormOptionsTorture(t *testing.T) {
	e := setup(t)
	dsn := reviewUser(t)
	open := func(t *testing.T, config *gorm.Config) *gorm.DB {
		cfg, err := gomysql.ParseDSN(dsn)
		if err != nil {
			t.Fatal(err)
		}
		config.Logger = logger.Discard
		db, err := gorm.Open(mysql.New(mysql.Config{DSNConfig: cfg}), config)
		if err != nil {
			t.Fatal(err)
		}
		sqlDB, _ := db.DB()
		t.Cleanup(func() { _ = sqlDB.Close() })
		return db
	}
	t.Run("PrepareStmt", func(t *testing.T) {
		reviewTortureOn(t, e, open(t, &gorm.Config{PrepareStmt: true}), 4*time.Second, false, nil)
	})
	t.Run("SkipDefaultTransaction", func(t *testing.T) {
		reviewTortureOn(t, e, open(t, &gorm.Config{SkipDefaultTransaction: true}), 4*time.Second, false, nil)
	})
	t.Run("DefaultTransactionTimeout", func(t *testing.T) {
		reviewTortureOn(t, e, open(t, &gorm.Config{DefaultTransactionTimeout: 30 * time.Second}), 4*time.Second, false, nil)
	})
}

// TestReviewSmallPoolTorture: many goroutines on pools of one and two
// connections, every path, with the killer on the pool of two.
func TestReviewSmallPoolTorture(t *testing.T) {
	e := setup(t)
	dsn := reviewUser(t)
	t.Run("pool1", func(t *testing.T) {
		reviewTortureSized(t, e, testdb.OpenDSN(t, dsn), 5*time.Second, false, nil, 24, 1)
	})
	t.Run("pool2-kill", func(t *testing.T) {
		reviewTortureSized(t, e, testdb.OpenDSN(t, dsn), 8*time.Second, true, nil, 24, 2)
	})
}
