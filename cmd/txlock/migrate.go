package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"strings"
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
idempotent, and safe to run from several processes at once: they take turns,
and each says what it applied itself. Whatever the version table records, up
checks that the lock and fence tables exist and creates a missing one (after
a migration interrupted halfway, or a table dropped by hand); tables created
by another tool from the same SQL are kept and recorded.`,
			Example: `  txlock migrate up
  txlock migrate up --table billing_locks --dsn 'app:secret@tcp(db:3306)/billing'`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return withDB(cmd, opts, migrateUp)
			},
		},
		newMigrateDownCmd(opts),
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
	rep, err := migrations.Up(ctx, db, migrations.Table(table))
	if err != nil {
		return err
	}
	switch latest := migrations.Latest(); {
	case len(rep.Applied) == 0:
		_, err = fmt.Fprintf(out, "%s on %s: up to date at version %d\n", table, where, latest)
	case len(rep.Missing) > 0:
		_, err = fmt.Fprintf(out, "%s on %s: %s missing although recorded as migrated: applied %d migration(s) again, now at version %d\n",
			table, where, strings.Join(rep.Missing, " and "), len(rep.Applied), latest)
	default:
		_, err = fmt.Fprintf(out, "%s on %s: applied %d migration(s), now at version %d\n", table, where, len(rep.Applied), latest)
	}
	return err
}

func migrateStatus(ctx context.Context, out io.Writer, db *sql.DB, table, where string) error {
	st, err := migrations.Status(ctx, db, migrations.Table(table))
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
