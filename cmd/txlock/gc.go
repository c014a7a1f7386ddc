package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/spf13/cobra"
)

// maxGCBatch bounds --batch: a batch is one transaction holding that many
// row locks.
const maxGCBatch = 10_000

// newGCCmd returns "txlock gc".
func newGCCmd(opts *rootOptions) *cobra.Command {
	var (
		olderThan time.Duration
		dryRun    bool
		batch     int
	)
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Delete key rows not changed for a while, never a held one",
		Long: `gc deletes the rows of the lock table (one per key ever locked) whose
updated_at is older than --older-than, so that keys used once (an order id,
a job run) do not accumulate forever. A row is created when its key is first
locked and is not written while locked, so its age is the time since it was
created, not since it was last used: gc may delete a key that is still in
use. That is safe: the library finds the row gone when it next locks the key
and creates it again.

gc never deletes a row that is held. It works in batches, each one READ
COMMITTED transaction:

  SELECT id FROM <table> WHERE id > <last> AND id < <max id at start>
    AND updated_at < <cutoff> ORDER BY id LIMIT <batch> FOR UPDATE SKIP LOCKED
  DELETE FROM <table> WHERE id IN (<those ids>)
  COMMIT

SKIP LOCKED passes over rows that a holder has locked, and the rows gc
locks cannot be taken by a locker until gc commits: a locker that queued
behind gc then finds the row gone and creates it again. The cutoff
(server's NOW(6) minus --older-than, in the session time zone) and the
highest id are fixed when gc starts, so it ends even while new keys appear.
The row with the highest id is never deleted: a locker that finds its row
gone holds a gap lock where the row was, and a key row created again gets
an id above the highest, outside every such gap, so it is never blocked by
one.
Rows skipped because they were held are counted as left.

Without --dry-run, gc acts only on the server named by --dsn or
$` + envDSN + ` (never on the default), and first names it on stderr.

The fence table (<table>_fence, the fencing counters) is never touched:
a key's counter must survive the deletion of its row.`,
		Example: `  txlock gc --older-than 720h --dry-run
  txlock gc --older-than 720h
  txlock gc --older-than 168h --batch 500 --table billing_locks`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if olderThan < 0 {
				return fmt.Errorf("--older-than must not be negative, got %v", olderThan)
			}
			if batch < 1 || batch > maxGCBatch {
				return fmt.Errorf("--batch must be between 1 and %d, got %d", maxGCBatch, batch)
			}
			gc := func(ctx context.Context, db *sql.DB, where string) error {
				res, err := collect(ctx, db, opts.table, olderThan, batch, dryRun)
				if err != nil {
					return err
				}
				return res.print(cmd.OutOrStdout(), opts.table, where)
			}
			if dryRun {
				ctx := cmd.Context()
				return opts.withDB(ctx, func(db *sql.DB, where string) error { return gc(ctx, db, where) })
			}
			return opts.destructive(cmd, "gc", func(ctx context.Context, c *console) error {
				fmt.Fprintf(c.log, "txlock: gc of %s on %s (%s): deleting the key rows not changed for %v, never a held one\n", c.in.table, c.in.where, c.in.srv, olderThan)
				return gc(ctx, c.in.db, c.in.where)
			})
		},
	}
	f := cmd.Flags()
	f.DurationVar(&olderThan, "older-than", 720*time.Hour, "delete key rows whose updated_at is older than this (e.g. 720h; 0s: every row not held now)")
	f.BoolVar(&dryRun, "dry-run", false, "only count the rows that would be deleted (plain read, no locks)")
	f.IntVar(&batch, "batch", 100, "rows per transaction")
	return cmd
}

// gcResult is what collect did.
type gcResult struct {
	DryRun  bool
	Cutoff  time.Time // server time, session time zone
	MaxID   int64     // highest id when gc started
	Found   int64     // dry run: rows older than the cutoff
	Deleted int64
	Batches int
	Retries int   // batches run again after a deadlock or lock-wait timeout
	Left    int64 // rows older than the cutoff still there at the end (held)
}

func (r gcResult) print(out io.Writer, table, where string) error {
	cutoff := r.Cutoff.Format("2006-01-02 15:04:05.000000")
	var err error
	if r.DryRun {
		_, err = fmt.Fprintf(out, "%s on %s: dry run: %d key row(s) last changed before %s (server time) would be deleted, except those held when gc runs; nothing deleted\n",
			table, where, r.Found, cutoff)
		return err
	}
	_, err = fmt.Fprintf(out, "%s on %s: deleted %d key row(s) last changed before %s (server time) in %d batch(es); %d such row(s) left because they were held\n",
		table, where, r.Deleted, cutoff, r.Batches, r.Left)
	return err
}

// gcRetries is how many times a batch is run again after a deadlock or a
// lock-wait timeout (both roll back or end the batch harmlessly).
const gcRetries = 5

// collect deletes the key rows of table last changed more than olderThan
// ago and not held, batch rows per transaction; with dryRun it only counts
// them.
func collect(ctx context.Context, db *sql.DB, table string, olderThan time.Duration, batch int, dryRun bool) (gcResult, error) {
	res := gcResult{DryRun: dryRun}
	t := "`" + table + "`"
	if err := db.QueryRowContext(ctx, "SELECT NOW(6) - INTERVAL ? MICROSECOND, (SELECT COALESCE(MAX(id), 0) FROM "+t+")",
		olderThan.Microseconds()).Scan(&res.Cutoff, &res.MaxID); err != nil {
		return res, fmt.Errorf("gc %s: %w", table, err)
	}
	count := "SELECT COUNT(*) FROM " + t + " WHERE id < ? AND updated_at < ?"
	if dryRun {
		if err := db.QueryRowContext(ctx, count, res.MaxID, res.Cutoff).Scan(&res.Found); err != nil {
			return res, fmt.Errorf("gc %s: %w", table, err)
		}
		return res, nil
	}
	selectQ := "SELECT id FROM " + t + " WHERE id > ? AND id < ? AND updated_at < ? ORDER BY id LIMIT " +
		strconv.Itoa(batch) + " FOR UPDATE SKIP LOCKED"
	var after int64
	for {
		var (
			ids []int64
			n   int64
			err error
		)
		for attempt := 0; ; attempt++ {
			ids, n, err = gcBatch(ctx, db, t, selectQ, after, res.MaxID, res.Cutoff)
			if err == nil || attempt == gcRetries || !retryable(err) {
				break
			}
			res.Retries++
		}
		if err != nil {
			return res, fmt.Errorf("gc %s: after deleting %d row(s): %w", table, res.Deleted, err)
		}
		if len(ids) == 0 {
			break
		}
		res.Deleted += n
		res.Batches++
		after = ids[len(ids)-1]
	}
	if err := db.QueryRowContext(ctx, count, res.MaxID, res.Cutoff).Scan(&res.Left); err != nil {
		return res, fmt.Errorf("gc %s: %w", table, err)
	}
	return res, nil
}

// gcBatch deletes, in one transaction, the next rows after id after that
// are old enough and not held. It returns the ids it locked and how many
// rows it deleted.
func gcBatch(ctx context.Context, db *sql.DB, t, selectQ string, after, maxID int64, cutoff time.Time) (ids []int64, n int64, err error) {
	tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return nil, 0, err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	if ids, err = queryIDs(ctx, tx, selectQ, after, maxID, cutoff); err != nil || len(ids) == 0 {
		if err == nil {
			err = tx.Rollback()
		}
		return ids, 0, err
	}
	r, err := tx.ExecContext(ctx, "DELETE FROM "+t+" WHERE id IN ("+placeholders(len(ids))+")", args(ids)...)
	if err != nil {
		return nil, 0, err
	}
	if n, err = r.RowsAffected(); err != nil {
		return nil, 0, err
	}
	return ids, n, tx.Commit()
}

// retryable reports a deadlock (1213) or lock-wait timeout (1205): the
// batch can be run again.
func retryable(err error) bool {
	var me *gomysql.MySQLError
	return errors.As(err, &me) && (me.Number == 1213 || me.Number == 1205)
}
