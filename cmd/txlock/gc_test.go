package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

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

	// The lockers use the library's defaults: REPEATABLE READ sessions and
	// the Locker's own small side pool. A locker that finds its key's row
	// collected creates it again outside its transaction and starts over,
	// and gc never deletes the newest row (see the gc command), so neither
	// the gap lock of a missing row nor a full side pool stalls them.
	locker, err := dblock.New(f.db, dblock.Table(f.table))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = locker.Close() })

	const workers, perWorker = 8, 100
	var (
		inside   [4]atomic.Int32
		overlaps atomic.Int64
		done     [4]atomic.Int64
		retries  atomic.Int64
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
	t.Logf("%d Do calls, %d retried (row collected 3 times running, or deadlock), gc: %d runs deleted %d rows (%d batch retries); key rows created: %d; binary: %s",
		sum, retries.Load(), gcRuns.Load(), gcDeleted.Load(), gcRetries.Load(), maxID, strings.TrimSpace(binOut))
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
