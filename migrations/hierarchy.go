package migrations

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/txlock/txlock/schema"
)

// hierarchySwitchAttempts bounds the runs of the switch's update that the
// server ends as a deadlock victim (an acquisition taking its rows in
// another order at the same moment).
const hierarchySwitchAttempts = 5

// Hierarchy reports whether the lock table's keys contain each other (see
// SetHierarchy). A table from before migration 4 has no setting: Up first.
func Hierarchy(ctx context.Context, db *sql.DB, opts ...Option) (bool, error) {
	cfg, err := newConfig(db, opts)
	if err != nil {
		return false, err
	}
	def, err := hierarchyDefault(ctx, db, cfg.table)
	if err != nil {
		return false, err
	}
	if def != "0" && def != "1" {
		return false, fmt.Errorf("migrations: a switch of the hierarchy of %s stopped halfway (its rows refuse every acquisition): run it again (txlock hierarchy on|off)", cfg.table)
	}
	return def == "1", nil
}

// hierarchyDefault returns the default of table's hierarchy column.
func hierarchyDefault(ctx context.Context, db interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, table string) (string, error) {
	var def sql.NullString
	err := db.QueryRowContext(ctx, "SELECT COLUMN_DEFAULT FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = 'hierarchy'", table).Scan(&def)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("migrations: %s has no hierarchy setting (it predates migration 4): run Up (txlock migrate up) first", table)
	}
	if err != nil {
		return "", fmt.Errorf("migrations: reading the hierarchy setting of %s: %w", table, err)
	}
	return trimQuotes(def.String), nil
}

// trimQuotes removes the quotes MariaDB puts around a literal default.
func trimQuotes(s string) string {
	if len(s) >= 2 && s[0] == '\'' && s[len(s)-1] == '\'' {
		return s[1 : len(s)-1]
	}
	return s
}

// SetHierarchy switches whether the lock table's keys contain each other:
// with on, an acquisition also takes, shared, the global key and each
// single-field key of a composite key, so that Global taken exclusively
// excludes every holder and a resource's lock excludes "user u on that
// resource". It is a property of the table, never of a process: every
// Locker learns it from the rows it locks.
//
// The switch first marks the rows created from now on as switching (a
// value no acquisition accepts), then sets every row to the new setting in
// one transaction that waits for each holder of a row and holds the rows
// until it commits, then makes the new setting the one of new rows and
// sets the rows created meanwhile: no holder under one setting ever
// overlaps a holder under the other. Acquisitions of the Locker's own
// transactions start over under the new setting; one in a transaction of
// the caller's fails with dblock.ErrHierarchyChanged. Run it when the table
// is quiet: it pauses every acquisition while it waits for the holders of
// the moment. LockTimeout bounds each wait. A switch that failed halfway
// leaves the table refusing acquisitions until it is run again.
func SetHierarchy(ctx context.Context, db *sql.DB, on bool, opts ...Option) error {
	cfg, err := newConfig(db, opts)
	if err != nil {
		return err
	}
	m, err := newMigrator(db, cfg)
	if err != nil {
		return err
	}
	v := 0
	if on {
		v = 1
	}
	tables := []string{cfg.table, schema.PermitTable(cfg.table)}
	return m.withLock(ctx, db, "hierarchy", func(conn *sql.Conn) error {
		if _, err := hierarchyDefault(ctx, conn, cfg.table); err != nil {
			return err
		}
		wait := int(math.Ceil(cfg.lockTimeout.Seconds()))
		// The ALTERs wait for the table's metadata lock one second at a
		// time (see setDefault); the row updates wait up to LockTimeout.
		if _, err := conn.ExecContext(ctx, fmt.Sprintf("SET SESSION lock_wait_timeout = 1, innodb_lock_wait_timeout = %d", wait)); err != nil {
			return fmt.Errorf("migrations: hierarchy %s: %w", cfg.table, err)
		}
		deadline := time.Now().Add(cfg.lockTimeout)
		// Rows created during the switch are marked as switching; every
		// row then gets the new setting in one transaction; then the new
		// setting becomes that of new rows, and the rows created meanwhile
		// get it too. Each ALTER waits until no transaction uses its table.
		for _, step := range []func() error{
			func() error { return setDefault(ctx, conn, tables, hierarchySwitching, deadline) },
			func() error { return updateRows(ctx, conn, tables, v) },
			func() error { return setDefault(ctx, conn, tables, v, deadline) },
			func() error { return updateRows(ctx, conn, tables, v) },
		} {
			if err := step(); err != nil {
				return fmt.Errorf("migrations: hierarchy %s: the switch stopped halfway, and acquisitions are refused until it is run again: %w", cfg.table, err)
			}
		}
		return nil
	})
}

// hierarchySwitching is the hierarchy value of rows created during a
// switch, which no acquisition accepts.
const hierarchySwitching = 2

// setDefault makes v the hierarchy value of the rows tables create. Each
// ALTER waits for its table's metadata lock, which every open transaction
// that used the table holds, one second at a time until deadline: while
// it waits, every new statement on the table queues behind it, including
// one that a holder it waits for needs to finish (a side-pool row lookup
// of a nested acquisition). Giving up for a moment lets that one through.
func setDefault(ctx context.Context, conn *sql.Conn, tables []string, v int, deadline time.Time) error {
	for _, t := range tables {
		for {
			_, err := conn.ExecContext(ctx, fmt.Sprintf("ALTER TABLE `%s` ALTER COLUMN hierarchy SET DEFAULT %d", t, v))
			if err == nil {
				break
			}
			if !isLockWaitTimeout(err) || !time.Now().Before(deadline) {
				return fmt.Errorf("setting the default of %s: %w", t, err)
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("setting the default of %s: %w", t, ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// isLockWaitTimeout reports whether err is the server's lock-wait timeout
// (1205), which a metadata-lock wait also ends with.
func isLockWaitTimeout(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == 1205
}

// updateRows sets every row of tables to v in one transaction, run again
// when the server makes it a deadlock victim.
func updateRows(ctx context.Context, conn *sql.Conn, tables []string, v int) error {
	for attempt := 1; ; attempt++ {
		err := updateHierarchy(ctx, conn, tables, v)
		if err == nil || attempt == hierarchySwitchAttempts || !isDeadlock(err) {
			return err
		}
	}
}

// updateHierarchy sets every row of tables to v in one transaction.
func updateHierarchy(ctx context.Context, conn *sql.Conn, tables []string, v int) error {
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	for _, t := range tables {
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("UPDATE `%s` SET hierarchy = %d WHERE hierarchy <> %d", t, v, v)); err != nil {
			_ = tx.Rollback()
			return err
		}
	}
	return tx.Commit()
}

// isDeadlock reports whether err is the server's deadlock error (1213).
func isDeadlock(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == 1213
}
