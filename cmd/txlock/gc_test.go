package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/schema"
)

// TestGCNeverBreaksMutualExclusion runs gc --older-than 0s over and over
// (in process, and the binary once) while goroutines take a few keys with
// Do and, under each lock, read a counter, pause and write it back plus
// one, with an overlap detector. gc deletes the rows of keys between their
// uses and while lockers wait for them; the library creates them again.
// Every increment must land, and no two holders of a key may overlap.
func TestGCNeverBreaksMutualExclusion(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	sqlDB, err := f.db.DB()
	if err != nil {
		t.Fatal(err)
	}
	var suffix [6]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		t.Fatal(err)
	}
	counters := "cli_gc_counter_" + hex.EncodeToString(suffix[:])
	if _, err := sqlDB.Exec("CREATE TABLE `" + counters + "` (k VARCHAR(64) PRIMARY KEY, n BIGINT NOT NULL) ENGINE=InnoDB"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := sqlDB.Exec("DROP TABLE IF EXISTS `" + counters + "`"); err != nil {
			t.Error(err)
		}
	})
	keys := []dblock.Key{dblock.Resource("gc:a"), dblock.Resource("gc:b"), {User: "u-1", Resource: "gc:c"}, dblock.Operation("gc:d")}
	for i := range keys {
		if _, err := sqlDB.Exec("INSERT INTO `"+counters+"` (k, n) VALUES (?, 0)", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}

	// Two liveness bugs of the library (reported; not gc's, and not breaches
	// of mutual exclusion) would stall this test until its deadline, so the
	// lockers here avoid them:
	//
	//  1. Under REPEATABLE READ, a lock transaction whose locking read finds
	//     the key's row collected (and purged; it was the newest row) keeps a
	//     gap lock up to the supremum, and the library then re-creates the
	//     row on its side pool while that transaction is still open: the
	//     INSERT, whose new id is the highest, waits for its own caller's gap
	//     lock. The lockers' sessions use READ COMMITTED (no gap locks).
	//  2. The default side pool has 2 connections: two re-creations' INSERT
	//     IGNOREs blocked behind the holder of the re-created row take both,
	//     and that holder waits for one to bump its fencing token. The side
	//     pool here is unbounded.
	locker := readCommittedLocker(t, f, sqlDB)

	const workers, perWorker = 8, 100
	var (
		inside   [4]atomic.Int32
		overlaps atomic.Int64
		done     [4]atomic.Int64
		retries  atomic.Int64
		rowDead  atomic.Int64 // row step: 1213
		rowGone  atomic.Int64 // row step: no rows after a duplicate
		lastTok  [4]atomic.Int64
		tokenBad atomic.Int64
		errs     = make(chan error, workers+2)
		total    atomic.Int64
	)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()

	// gc, in process, until the workers are done.
	gcCtx, stopGC := context.WithCancel(ctx)
	var gcDeleted, gcRuns, gcRetries atomic.Int64
	var gcWG sync.WaitGroup
	gcWG.Add(1)
	go func() {
		defer gcWG.Done()
		for gcCtx.Err() == nil {
			res, err := collect(gcCtx, sqlDB, f.table, 0, 2, false)
			if err != nil {
				if gcCtx.Err() == nil {
					errs <- fmt.Errorf("gc: %w", err)
				}
				return
			}
			gcDeleted.Add(res.Deleted)
			gcRetries.Add(int64(res.Retries))
			gcRuns.Add(1)
			time.Sleep(time.Millisecond)
		}
	}()
	// The binary, once, in the middle of it.
	var binOut, binErr string
	var binCode int
	bin := buildBinary(t)
	gcWG.Add(1)
	go func() {
		defer gcWG.Done()
		for total.Load() < workers*perWorker/3 && gcCtx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		var err error
		binOut, binErr, binCode, err = runBin(bin, "", append([]string{"gc", "--older-than", "0s", "--batch", "1"}, f.flags...)...)
		if err != nil {
			errs <- fmt.Errorf("running txlock gc: %w", err)
		}
	}()

	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var opts []dblock.LockOption
			if w%2 == 0 {
				opts = append(opts, dblock.Fencing())
			}
			for i := range perWorker {
				ki := (w + i) % len(keys)
				// A pause between uses lets keys go free, for gc to collect
				// them between uses as well as while lockers queue.
				time.Sleep(time.Duration(i%4) * 300 * time.Microsecond)
				fn := func(ctx context.Context, tx *gorm.DB) error {
					if inside[ki].Add(1) != 1 {
						overlaps.Add(1)
					}
					defer inside[ki].Add(-1)
					if tok, ok := dblock.TokenFrom(ctx, keys[ki]); ok {
						// Tokens increase in the order holders get the lock.
						if prev := lastTok[ki].Swap(tok); tok <= prev {
							tokenBad.Add(1)
						}
					}
					var n int64
					if err := tx.Raw("SELECT n FROM `"+counters+"` WHERE k = ?", fmt.Sprint(ki)).Scan(&n).Error; err != nil {
						return err
					}
					time.Sleep(200 * time.Microsecond)
					return tx.Exec("UPDATE `"+counters+"` SET n = ? WHERE k = ?", n+1, fmt.Sprint(ki)).Error
				}
				for {
					err := locker.Do(ctx, keys[ki], fn, opts...)
					if err == nil {
						done[ki].Add(1)
						total.Add(1)
						break
					}
					// None of these ran fn: retrying cannot count twice.
					switch {
					case errors.Is(err, dblock.ErrDeadlock) || strings.Contains(err.Error(), "disappeared"):
						// A deadlock rolls everything back; gc may delete a key's
						// row between its creation and its locking three times
						// running.
						retries.Add(1)
						continue
					case rowStepRace(err):
						if errors.Is(err, sql.ErrNoRows) {
							rowGone.Add(1)
						} else {
							rowDead.Add(1)
						}
						// Re-creators that deadlocked would meet again at once.
						time.Sleep(time.Duration(1+(w+i)%3) * time.Millisecond)
						continue
					}
					errs <- fmt.Errorf("worker %d: %w", w, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	stopGC()
	gcWG.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}

	var sum int64
	for ki := range keys {
		var n int64
		if err := sqlDB.QueryRow("SELECT n FROM `"+counters+"` WHERE k = ?", fmt.Sprint(ki)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != done[ki].Load() {
			t.Errorf("key %s: counter %d, %d successful Do calls: a lost update, so two holders overlapped", keys[ki], n, done[ki].Load())
		}
		sum += n
	}
	if sum != workers*perWorker || overlaps.Load() != 0 || tokenBad.Load() != 0 {
		t.Errorf("counters sum to %d, want %d; %d overlap(s); %d fencing token(s) out of order", sum, workers*perWorker, overlaps.Load(), tokenBad.Load())
	}
	if gcDeleted.Load() == 0 {
		t.Error("gc deleted no row: it did not race with the lockers")
	}
	if binCode != 0 || !strings.Contains(binOut, "deleted ") {
		t.Errorf("txlock gc --older-than 0s: exit %d\nstdout: %s\nstderr: %s", binCode, binOut, binErr)
	}
	// The fence rows are never collected: one per fenced key.
	var fences int
	if err := sqlDB.QueryRow("SELECT COUNT(*) FROM `" + schema.FenceTable(f.table) + "`").Scan(&fences); err != nil {
		t.Fatal(err)
	}
	if fences != len(keys) {
		t.Errorf("%d fence rows, want %d", fences, len(keys))
	}
	var maxID int64
	if err := sqlDB.QueryRow("SELECT COALESCE(MAX(id), 0) FROM `" + f.table + "`").Scan(&maxID); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d Do calls, %d retried (row collected 3 times running, or deadlock), row step retried %d times after a deadlock and %d after the row vanished (see rowStepRace); gc: %d runs deleted %d rows (%d batch retries); key rows created: %d; binary: %s",
		sum, retries.Load(), rowDead.Load(), rowGone.Load(), gcRuns.Load(), gcDeleted.Load(), gcRetries.Load(), maxID, strings.TrimSpace(binOut))
}

// readCommittedLocker returns a Locker on f's table whose sessions run
// READ COMMITTED, with sqlDB (unbounded) as its side pool.
func readCommittedLocker(t *testing.T, f *fixture, sqlDB *sql.DB) *dblock.Locker {
	t.Helper()
	srv, err := detectServer(context.Background(), sqlDB)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := gomysql.ParseDSN(f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ParseTime = true
	iso := "transaction_isolation" // MySQL 8, MariaDB 11.1+
	if srv.MariaDB && !srv.atLeast(11, 1) {
		iso = "tx_isolation"
	}
	cfg.Params = map[string]string{iso: "'READ-COMMITTED'"}
	db, err := gorm.Open(mysql.New(mysql.Config{DSNConfig: cfg}), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	rcDB, err := db.DB()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rcDB.Close() })
	locker, err := dblock.New(db, dblock.Table(f.table), dblock.SideDB(sqlDB))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = locker.Close() })
	var level string
	if err := locker.Do(context.Background(), dblock.Resource("isolation-check"), func(_ context.Context, tx *gorm.DB) error {
		return tx.Raw("SELECT @@" + iso).Scan(&level).Error
	}); err != nil || level != "READ-COMMITTED" {
		t.Fatalf("lock transaction isolation %q, %v; want READ-COMMITTED", level, err)
	}
	return locker
}

// rowStepRace reports the two ways the library's row step (protocol step 1,
// autocommit, before the lock transaction begins, so fn never ran) fails
// when gc deletes rows under it; the library does not retry them itself:
//
//   - Error 1213: two lockers re-create the same collected key at once. Both
//     INSERT IGNOREs S-lock the delete-marked, not yet purged uk_key_hash
//     entry that gc left, then both ask for an insert-intention lock: the
//     classic duplicate-insert deadlock (SHOW ENGINE INNODB STATUS shows two
//     INSERT IGNOREs, no gc).
//   - sql.ErrNoRows: INSERT IGNORE found the key's row (a duplicate), then gc
//     deleted it before the lookup that follows.
func rowStepRace(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "dblock: finding the row of") &&
		(strings.Contains(msg, "Error 1213") || errors.Is(err, sql.ErrNoRows))
}

func TestBinaryGC(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	sqlDB, err := f.db.DB()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	noop := func(context.Context, *gorm.DB) error { return nil }
	for _, k := range []string{"old:1", "old:2", "old:held", "new:1"} {
		if err := f.locker.Do(ctx, dblock.Resource(k), noop, dblock.Fencing()); err != nil {
			t.Fatal(err)
		}
	}
	// Age three rows by a day.
	if _, err := sqlDB.Exec("UPDATE `"+f.table+"` SET created_at = created_at - INTERVAL 1 DAY, updated_at = updated_at - INTERVAL 1 DAY WHERE resource LIKE ?", "old:%"); err != nil {
		t.Fatal(err)
	}
	held, _ := f.held(t, dblock.Resource("old:held"))

	out := f.ok(t, "gc", "--older-than", "1h", "--dry-run")
	if !strings.Contains(out, "dry run: 3 key row(s)") || !strings.Contains(out, "nothing deleted") {
		t.Errorf("dry run: %s", out)
	}
	out = f.ok(t, "gc", "--older-than", "1h", "--batch", "1")
	if !strings.Contains(out, "deleted 2 key row(s)") || !strings.Contains(out, "in 2 batch(es); 1 such row(s) left because they were held") {
		t.Errorf("gc: %s", out)
	}
	var left []string
	rows, err := sqlDB.Query("SELECT resource FROM `" + f.table + "` ORDER BY resource")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var r string
		if err := rows.Scan(&r); err != nil {
			t.Fatal(err)
		}
		left = append(left, r)
	}
	rows.Close()
	if strings.Join(left, ",") != "new:1,old:held" {
		t.Errorf("rows left: %v, want the new and the held one", left)
	}
	var fences int
	if err := sqlDB.QueryRow("SELECT COUNT(*) FROM `" + schema.FenceTable(f.table) + "`").Scan(&fences); err != nil || fences != 4 {
		t.Errorf("fence rows: %d, %v; want all 4 kept", fences, err)
	}
	// The held lock is intact, and collected keys lock again.
	if err := held.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := f.locker.Do(ctx, dblock.Resource("old:1"), noop); err != nil {
		t.Fatalf("locking a collected key: %v", err)
	}

	for _, args := range [][]string{{"gc", "--older-than", "-1h"}, {"gc", "--batch", "0"}} {
		if _, errOut, code := f.exitCode(t, "", args...); code != 1 || !strings.Contains(errOut, "must") {
			t.Errorf("%v: exit %d, %s", args, code, errOut)
		}
	}
}
