package main

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// Job is the scheduled work that must never run twice at once: here it
// records its run, and two overlap detectors.
type Job struct {
	db       *gorm.DB
	runs     string // table: one row per run, written in the lock's transaction
	guard    string // table: a counter of running jobs, in autocommit
	duration time.Duration
	worker   string
}

var tableRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// NewJob returns the job of worker, recording into the tables prefix+"runs"
// and prefix+"guard".
func NewJob(db *gorm.DB, prefix, worker string, duration time.Duration) (*Job, error) {
	j := &Job{db: db, runs: prefix + "runs", guard: prefix + "guard", duration: duration, worker: worker}
	if !tableRE.MatchString(j.runs) || !tableRE.MatchString(j.guard) {
		return nil, fmt.Errorf("singleton: invalid table prefix %q", prefix)
	}
	return j, nil
}

// CreateTables creates the job's tables, emptied.
func (j *Job) CreateTables(ctx context.Context) error {
	for _, s := range []string{
		"DROP TABLE IF EXISTS `" + j.runs + "`, `" + j.guard + "`",
		"CREATE TABLE `" + j.runs + "` (id BIGINT AUTO_INCREMENT PRIMARY KEY, worker VARCHAR(32) NOT NULL, " +
			"started_at DATETIME(6) NOT NULL, ended_at DATETIME(6) NOT NULL) ENGINE=InnoDB",
		"CREATE TABLE `" + j.guard + "` (id INT PRIMARY KEY, running INT NOT NULL, max_running INT NOT NULL) ENGINE=InnoDB",
		"INSERT INTO `" + j.guard + "` VALUES (1, 0, 0)",
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

// Run does the job under ctx, which carries the global lock's transaction.
func (j *Job) Run(ctx context.Context) (err error) {
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
	// Detector 2: the run's interval by the server's clock, recorded in the
	// lock's transaction.
	tx := dblock.DB(ctx, j.db)
	var started time.Time
	if err := tx.Raw("SELECT NOW(6)").Scan(&started).Error; err != nil {
		return err
	}
	select {
	case <-time.After(j.duration): // the work
	case <-ctx.Done():
		return ctx.Err()
	}
	return tx.Exec("INSERT INTO `"+j.runs+"` (worker, started_at, ended_at) VALUES (?, ?, NOW(6))", j.worker, started).Error
}

// report is what the tables say after the workers ended.
type report struct {
	runs       int64
	overlaps   int64 // pairs of runs whose intervals intersect
	maxRunning int64 // most jobs running at once, by the counter
	byWorker   map[string]int64
}

func (j *Job) report(ctx context.Context) (report, error) {
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
