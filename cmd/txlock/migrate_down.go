package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/migrations"
)

// newMigrateDownCmd returns "txlock migrate down".
func newMigrateDownCmd(opts *rootOptions) *cobra.Command {
	var yes, force bool
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Roll back every migration (drop the tables and all locks in them)",
		Long: `down rolls back every applied migration: it drops the run, leader and
session tables (MinInterval's last runs, election leaders, connection
labels), then the lock table and its fence table, in one statement, with
every key row and fencing counter in them.

Stop every service that uses the tables first. While they are missing, the
services' lock calls fail; recreated (migrate up), the lock table numbers
its rows from 1 again, so row ids that a running process cached name other
keys' rows, and fencing tokens start again at 1, below tokens already handed
out.

A transaction that holds a key keeps the tables in use until it ends, and a
DROP waiting for it makes every other locker, of any key, queue behind the
DROP. So down first looks for held keys with the SKIP LOCKED probe of
"txlock locks" and refuses if it finds any, unless --force; and its DROP
waits only briefly for the tables (a short lock_wait_timeout), then fails
with nothing dropped (the newest migration's Down takes the lock table's
metadata lock before it drops anything).

It names the server and database it acts on, acts only on the one named by
--dsn or $` + envDSN + ` (never on the default), and asks for confirmation
on stdin (y/N) unless --yes is given.`,
		Example: `  txlock migrate down --dsn 'root@tcp(127.0.0.1:3306)/test'
  ` + envDSN + `='app:secret@tcp(db:3306)/billing' txlock migrate down --table billing_locks --yes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return opts.destructive(cmd, "migrate down", func(ctx context.Context, c *console) error {
				return (&downer{c}).down(ctx, yes, force)
			})
		},
	}
	f := cmd.Flags()
	f.BoolVar(&yes, "yes", false, "do not ask for confirmation (for scripts)")
	f.BoolVar(&force, "force", false, "drop even if the probe finds held keys (the DROP still gives up, dropping nothing, if a holder remains past its short lock wait)")
	return cmd
}

// downer carries out "txlock migrate down": the outcome on out, the
// warning and the question on log.
type downer struct{ *console }

// droppedTables names the tables that down drops, for its messages.
func droppedTables(table string) string { return listed(migrations.Tables(table)) }

// heldShown bounds how many held keys a refusal names.
const heldShown = 3

func (d *downer) down(ctx context.Context, yes, force bool) error {
	in := d.in
	table := in.table
	all := droppedTables(table)
	opt := migrations.Table(table)
	st, err := migrations.Status(ctx, in.db, opt)
	if err != nil {
		return err
	}
	if n, _ := appliedCount(st); n == 0 {
		_, err = fmt.Fprintf(d.out, "%s on %s: nothing to roll back\n", table, in.where)
		return err
	}
	fmt.Fprintf(d.log, "txlock: migrate down drops %s on %s (%s), with every key row and fencing counter in them.\n"+
		"Stop every service that uses them first: while they are missing the services' lock calls fail, and once recreated the "+
		"row ids start again at 1 (ids a running process cached then name other keys' rows) and so do fencing tokens.\n",
		all, in.where, in.srv)

	held, which, err := d.heldKeys(ctx)
	if err != nil {
		return err
	}
	if held > 0 {
		if !force {
			return fmt.Errorf("%s on %s: %d key(s) are held right now (%s): a DROP would wait for their holders and every locker would queue behind it; "+
				"stop the services that use %s (txlock locks shows the holders), or pass --force to try anyway: nothing dropped",
				table, in.where, held, which, table)
		}
		fmt.Fprintf(d.log, "txlock: --force: %d key(s) held right now (%s); the DROP gives up, dropping nothing, if a holder remains past its short lock wait\n",
			held, which)
	}
	if !yes && !d.confirm(fmt.Sprintf("Drop %s on %s?", all, in.where)) {
		return errors.New("not confirmed: nothing dropped")
	}
	rep, err := migrations.Down(ctx, in.db, opt)
	if err != nil {
		return err
	}
	if len(rep.RolledBack) == 0 {
		_, err = fmt.Fprintf(d.out, "%s on %s: nothing to roll back (another process rolled it back meanwhile)\n", table, in.where)
	} else {
		_, err = fmt.Fprintf(d.out, "%s on %s: rolled back %d migration(s), %s dropped\n", table, in.where, len(rep.RolledBack), all)
	}
	return err
}

// heldKeys probes the whole lock table and its permit table for held
// rows (SKIP LOCKED, as "txlock locks" does) and returns how many it found
// and a description naming up to heldShown of them. A missing table holds
// nothing. A held permit counts: the DDL of the newest migrations' Down
// (the lock table's) does not wait for its holder, so Down would roll
// them back, then give up at the permit table's.
func (d *downer) heldKeys(ctx context.Context) (int, string, error) {
	var n int
	if err := d.in.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM information_schema.tables
		WHERE table_schema = DATABASE() AND table_name = ?`, d.in.table).Scan(&n); err != nil {
		return 0, "", fmt.Errorf("looking up %s: %w", d.in.table, err)
	}
	if n == 0 {
		return 0, "", nil
	}
	ids, err := d.in.probeHeld(ctx, dblock.Key{})
	if err != nil {
		return 0, "", err
	}
	permits, _, err := d.in.probePermits(ctx, dblock.Key{})
	if err != nil || len(ids)+len(permits) == 0 {
		return 0, "", err
	}
	var names []string
	for _, set := range []struct {
		ids    []int64
		keysOf keysOfFunc
		prefix string
	}{{ids, d.in.keyRows, ""}, {permits, d.in.permitKeys, "a permit of "}} {
		shown := set.ids[:min(len(set.ids), heldShown-min(len(names), heldShown))]
		keys, err := set.keysOf(ctx, shown)
		if err != nil {
			return 0, "", err
		}
		for _, id := range shown {
			if k, ok := keys[id]; ok && !k.IsZero() {
				names = append(names, set.prefix+k.String())
			} else {
				names = append(names, fmt.Sprintf("%srow %d", set.prefix, id)) // deleted since the probe, or its key row is
			}
		}
	}
	if len(ids)+len(permits) > len(names) {
		names = append(names, "...")
	}
	return len(ids) + len(permits), strings.Join(names, ", "), nil
}
