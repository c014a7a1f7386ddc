package main

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/schema"
)

// Job is the scheduled work that must run once per interval across all
// replicas: here it records its run, and two overlap detectors.
type Job struct {
	db        *gorm.DB
	runs      string // table: one row per run, written in the lock's transaction
	guard     string // table: a counter of running jobs, in autocommit
	lockTable string // txlock's lock table, whose run table dates each run
	duration  time.Duration
	worker    string
}

var tableRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// NewJob returns the job of worker, recording into the tables prefix+"runs"
// and prefix+"guard"; lockTable is txlock's lock table the job locks on.
func NewJob(db *gorm.DB, lockTable, prefix, worker string, duration time.Duration) (*Job, error) {
	j := &Job{db: db, runs: prefix + "runs", guard: prefix + "guard", lockTable: lockTable, duration: duration, worker: worker}
	if !tableRE.MatchString(j.runs) || !tableRE.MatchString(j.guard) || schema.ValidTableName(lockTable) != nil {
		return nil, fmt.Errorf("singleton: invalid table prefix %q or lock table %q", prefix, lockTable)
	}
	return j, nil
}

// CreateTables creates the job's tables, emptied, and forgets the job's
// past runs (its row of the run table).
func (j *Job) CreateTables(ctx context.Context) error {
	for _, s := range []string{
		"DROP TABLE IF EXISTS `" + j.runs + "`, `" + j.guard + "`",
		"CREATE TABLE `" + j.runs + "` (id BIGINT AUTO_INCREMENT PRIMARY KEY, worker VARCHAR(32) NOT NULL, " +
			"started_at DATETIME(6) NOT NULL, ended_at DATETIME(6) NOT NULL) ENGINE=InnoDB",
		"CREATE TABLE `" + j.guard + "` (id INT PRIMARY KEY, running INT NOT NULL, max_running INT NOT NULL) ENGINE=InnoDB",
		"INSERT INTO `" + j.guard + "` VALUES (1, 0, 0)",
		"DELETE r FROM `" + schema.RunTable(j.lockTable) + "` r JOIN `" + j.lockTable + "` t ON t.key_hash = r.key_hash WHERE t.is_global = 1",
	} {
		if err := j.db.WithContext(ctx).Exec(s).Error; err != nil {
			return err
		}
	}
	return nil
}

// DropTables drops the job's tables.
func (j *Job) DropTables(ctx context.Context) error {
	return j.db.WithContext(ctx).Exec("DROP TABLE IF EXISTS `" + j.runs + "`, `" + j.guard + "`").Error
}

// errFailed is the error of a run told to fail: its writes, and its run,
// roll back.
var errFailed = errors.New("the job failed (on purpose): its run is rolled back and does not count")

// Run does the job in tx, the global lock's transaction; fail makes it
// fail after its writes, which then roll back with the run's record.
func (j *Job) Run(ctx context.Context, tx *gorm.DB, fail bool) (err error) {
	// Detector 1: a counter of running jobs, in autocommit on the pool,
	// outside the lock's transaction, so that other processes see it at once.
	if err := j.db.WithContext(ctx).Exec("UPDATE `" + j.guard + "` SET running = running + 1, " +
		"max_running = GREATEST(max_running, running) WHERE id = 1").Error; err != nil {
		return err
	}
	defer func() {
		if e := j.db.WithContext(context.WithoutCancel(ctx)).Exec("UPDATE `" + j.guard + "` SET running = running - 1 WHERE id = 1").Error; err == nil {
			err = e
		}
	}()
	// Detector 2: the run's interval by the server's clock (UTC), recorded
	// in the lock's transaction. It starts at the grant: MinInterval wrote
	// the grant's server time in the run table, in this transaction.
	var started time.Time
	if err := tx.Raw("SELECT r.last_run FROM `" + schema.RunTable(j.lockTable) + "` r JOIN `" + j.lockTable + "` t " +
		"ON t.key_hash = r.key_hash WHERE t.is_global = 1").Row().Scan(&started); err != nil {
		return err
	}
	select {
	case <-time.After(j.duration): // the work
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := tx.Exec("INSERT INTO `"+j.runs+"` (worker, started_at, ended_at) VALUES (?, ?, UTC_TIMESTAMP(6))", j.worker, started).Error; err != nil {
		return err
	}
	if fail {
		return errFailed
	}
	return nil
}

// report is what the tables say after the workers ended.
type report struct {
	runs       int64
	minGap     time.Duration // the least time between two runs' starts, server clock
	closeGaps  int64         // pairs of consecutive runs that started less than the interval apart
	overlaps   int64         // pairs of runs whose intervals intersect
	maxRunning int64         // most jobs running at once, by the counter
	byWorker   map[string]int64
}

func (j *Job) report(ctx context.Context, interval time.Duration) (report, error) {
	r := report{byWorker: map[string]int64{}}
	db := j.db.WithContext(ctx)
	if err := db.Raw("SELECT COUNT(*) FROM `" + j.runs + "`").Scan(&r.runs).Error; err != nil {
		return r, err
	}
	if err := db.Raw("SELECT COUNT(*) FROM `" + j.runs + "` a JOIN `" + j.runs + "` b " +
		"ON a.id < b.id AND a.started_at < b.ended_at AND b.started_at < a.ended_at").Scan(&r.overlaps).Error; err != nil {
		return r, err
	}
	if err := db.Raw("SELECT max_running FROM `" + j.guard + "` WHERE id = 1").Scan(&r.maxRunning).Error; err != nil {
		return r, err
	}
	starts, err := db.Raw("SELECT started_at FROM `" + j.runs + "` ORDER BY started_at").Rows()
	if err != nil {
		return r, err
	}
	defer starts.Close()
	var prev time.Time
	for n := 0; starts.Next(); n++ {
		var start time.Time
		if err := starts.Scan(&start); err != nil {
			return r, err
		}
		if gap := start.Sub(prev); n > 0 {
			if n == 1 || gap < r.minGap {
				r.minGap = gap
			}
			if gap < interval {
				r.closeGaps++
			}
		}
		prev = start
	}
	if err := starts.Err(); err != nil {
		return r, err
	}
	var rows []struct {
		Worker string
		N      int64
	}
	if err := db.Raw("SELECT worker, COUNT(*) AS n FROM `" + j.runs + "` GROUP BY worker").Scan(&rows).Error; err != nil {
		return r, err
	}
	for _, row := range rows {
		r.byWorker[row.Worker] = row.N
	}
	return r, nil
}
