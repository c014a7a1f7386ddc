package main

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/txlock/txlock/migrations"
)

// newHierarchyCmd returns "txlock hierarchy": show or switch whether the
// lock table's keys contain each other.
func newHierarchyCmd(opts *rootOptions) *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "hierarchy [on|off]",
		Short: "Show or switch whether the lock table's keys contain each other",
		Long: `hierarchy shows the lock table's hierarchy setting, or switches it.

With the hierarchy on, the global key contains every key, and a single-field
key contains the composite keys that set that field: an acquisition also takes
the keys containing its keys, shared, so that the global key taken
exclusively waits for every holder and then excludes all of them, and a
resource's lock excludes "user u on that resource". See docs/MODES.md.

The setting belongs to the table, never to a process: every row carries it
and every lock statement reads it, so services need no restart. A switch sets
the default of new rows, then updates every row in one transaction that waits
for each holder of the moment: every acquisition pauses until it commits, and
no holder under one setting ever overlaps a holder under the other. Run it
when the table is quiet. Switching needs --dsn or $` + envDSN + ` and asks
for confirmation unless --yes is given.`,
		Example: `  txlock hierarchy
  txlock hierarchy on --dsn 'app:secret@tcp(db:3306)/orders'
  txlock hierarchy off --table billing_locks --yes`,
		Args:      cobra.MaximumNArgs(1),
		ValidArgs: []string{"on", "off"},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return opts.withDB(cmd.Context(), func(db *sql.DB, where string) error {
					on, err := migrations.Hierarchy(cmd.Context(), db, migrations.Table(opts.table))
					if err != nil {
						return err
					}
					_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s on %s: hierarchy %s\n", opts.table, where, onOff(on))
					return err
				})
			}
			var on bool
			switch args[0] {
			case "on":
				on = true
			case "off":
			default:
				return fmt.Errorf("hierarchy %q: want on or off", args[0])
			}
			return opts.destructive(cmd, "hierarchy "+args[0], func(ctx context.Context, c *console) error {
				was, err := migrations.Hierarchy(ctx, c.in.db, migrations.Table(c.in.table))
				if err != nil {
					return err
				}
				if was == on {
					_, err = fmt.Fprintf(c.out, "%s on %s: hierarchy already %s\n", c.in.table, c.in.where, onOff(on))
					return err
				}
				fmt.Fprintf(c.log, "txlock: switching the hierarchy of %s on %s (%s) %s: every acquisition pauses until the holders of the moment have ended\n",
					c.in.table, c.in.where, c.in.srv, onOff(on))
				if !yes && !c.confirm("Switch?") {
					return fmt.Errorf("not confirmed: nothing changed")
				}
				if err := migrations.SetHierarchy(ctx, c.in.db, on, migrations.Table(c.in.table)); err != nil {
					return err
				}
				_, err = fmt.Fprintf(c.out, "%s on %s: hierarchy %s\n", c.in.table, c.in.where, onOff(on))
				return err
			})
		},
	}
	cmd.Flags().BoolVar(&yes, "yes", false, "do not ask for confirmation (for scripts)")
	return cmd
}

// onOff renders a setting.
func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}
