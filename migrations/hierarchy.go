package migrations

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"

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
// The switch changes the setting of the rows created from now on, then of
// every row, in one transaction that waits for each holder of a row and
// makes every acquisition wait until it commits: no holder under one
// setting ever overlaps a holder under the other. Acquisitions of the
// Locker's own transactions then start over under the new setting; one
// in a transaction of the caller's fails with dblock.ErrHierarchyChanged.
// Run it when the table is quiet: it pauses every acquisition while it
// waits for the holders of the moment. LockTimeout bounds each wait.
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
		if _, err := conn.ExecContext(ctx, fmt.Sprintf("SET SESSION lock_wait_timeout = %d, innodb_lock_wait_timeout = %d", wait, wait)); err != nil {
			return fmt.Errorf("migrations: hierarchy %s: %w", cfg.table, err)
		}
		// The rows created from now on: each ALTER waits until no
		// transaction uses the table.
		for _, t := range tables {
			if _, err := conn.ExecContext(ctx, fmt.Sprintf("ALTER TABLE `%s` ALTER COLUMN hierarchy SET DEFAULT %d", t, v)); err != nil {
				return fmt.Errorf("migrations: hierarchy %s: setting the default of %s: %w", cfg.table, t, err)
			}
		}
		// Every row, in one transaction.
		for attempt := 1; ; attempt++ {
			err := updateHierarchy(ctx, conn, tables, v)
			if err == nil {
				return nil
			}
			if attempt == hierarchySwitchAttempts || !isDeadlock(err) {
				return fmt.Errorf("migrations: hierarchy %s: updating the rows (the new default is set; run the switch again to finish it): %w", cfg.table, err)
			}
		}
	})
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
