package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/txlock/txlock/migrations"
)

// newMigrateCmd returns "txlock migrate" and its subcommands.
func newMigrateCmd(opts *rootOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Create, drop or inspect the lock tables",
		Long: `migrate applies txlock's versioned schema (the lock table and its fence
table) and records the applied versions in <table>_schema_version.`,
		Example: `  txlock migrate up
  txlock migrate status --table billing_locks
  txlock migrate down --dsn 'root@tcp(127.0.0.1:3306)/test'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(
		&cobra.Command{
			Use:   "up",
			Short: "Apply the pending migrations (create the tables)",
			Long: `up applies every migration the database does not have yet. It is
idempotent, and safe to run from several processes at once.`,
			Example: `  txlock migrate up
  txlock migrate up --table billing_locks --dsn 'app:secret@tcp(db:3306)/billing'`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return withDB(cmd, opts, migrateUp)
			},
		},
		&cobra.Command{
			Use:   "down",
			Short: "Roll back every migration (drop the tables and all locks in them)",
			Long: `down rolls back every applied migration: it drops the lock table and
its fence table. Locks held at that moment block it until they are released.`,
			Example: `  txlock migrate down --table tb_lock`,
			Args:    cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return withDB(cmd, opts, migrateDown)
			},
		},
		&cobra.Command{
			Use:   "status",
			Short: "List the migrations and whether each is applied",
			Long:  `status lists the migrations that this binary embeds and whether each is applied. It changes nothing.`,
			Example: `  txlock migrate status
  ` + envDSN + `='root@tcp(127.0.0.1:3306)/test' txlock migrate status --table billing_locks`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return withDB(cmd, opts, migrateStatus)
			},
		},
	)
	return cmd
}

// migrateFunc is the body of a migrate subcommand.
type migrateFunc func(ctx context.Context, out io.Writer, db *sql.DB, table, where string) error

// withDB opens the database, runs fn on it and closes it.
func withDB(cmd *cobra.Command, opts *rootOptions, fn migrateFunc) error {
	return opts.withDB(cmd.Context(), func(db *sql.DB, where string) error {
		return fn(cmd.Context(), cmd.OutOrStdout(), db, opts.table, where)
	})
}

// appliedCount returns how many of the migrations are applied, and the
// highest applied version.
func appliedCount(st []migrations.MigrationStatus) (n int, version int64) {
	for _, s := range st {
		if s.Applied {
			n++
			version = max(version, s.Version)
		}
	}
	return n, version
}

func migrateUp(ctx context.Context, out io.Writer, db *sql.DB, table, where string) error {
	opt := migrations.WithTable(table)
	before, err := migrations.Status(ctx, db, opt)
	if err != nil {
		return err
	}
	if err := migrations.Up(ctx, db, opt); err != nil {
		return err
	}
	after, err := migrations.Status(ctx, db, opt)
	if err != nil {
		return err
	}
	n0, _ := appliedCount(before)
	n1, version := appliedCount(after)
	if n1 == n0 {
		_, err = fmt.Fprintf(out, "%s on %s: up to date at version %d\n", table, where, version)
	} else {
		_, err = fmt.Fprintf(out, "%s on %s: applied %d migration(s), now at version %d\n", table, where, n1-n0, version)
	}
	return err
}

func migrateDown(ctx context.Context, out io.Writer, db *sql.DB, table, where string) error {
	opt := migrations.WithTable(table)
	before, err := migrations.Status(ctx, db, opt)
	if err != nil {
		return err
	}
	if err := migrations.Down(ctx, db, opt); err != nil {
		return err
	}
	n, _ := appliedCount(before)
	if n == 0 {
		_, err = fmt.Fprintf(out, "%s on %s: nothing to roll back\n", table, where)
	} else {
		_, err = fmt.Fprintf(out, "%s on %s: rolled back %d migration(s), tables dropped\n", table, where, n)
	}
	return err
}

func migrateStatus(ctx context.Context, out io.Writer, db *sql.DB, table, where string) error {
	st, err := migrations.Status(ctx, db, migrations.WithTable(table))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s on %s:\n", table, where)
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "VERSION\tSTATE\tAPPLIED AT (UTC)\tMIGRATION")
	for _, s := range st {
		state, at := "pending", "-"
		if s.Applied {
			state, at = "applied", s.AppliedAt.UTC().Format(time.DateTime)
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\n", s.Version, state, at, s.Source)
	}
	return w.Flush()
}
