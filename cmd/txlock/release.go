package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/lockkey"
)

// identifyWait bounds how long release waits behind a holder to name it
// (MariaDB).
const identifyWait = 2 * time.Second

// goneWait bounds how long release waits for a killed connection to leave
// the process list.
const goneWait = 5 * time.Second

// maxNamings bounds how many times release names the holder of a key
// whose holder keeps running statements or changing.
const maxNamings = 3

// newReleaseCmd returns "txlock release".
func newReleaseCmd(opts *rootOptions) *cobra.Command {
	var (
		kf    keyFlags
		force bool
	)
	cmd := &cobra.Command{
		Use:   "release",
		Short: "End the connection that holds a key (KILL), after confirmation",
		Long: `release finds the connection whose transaction holds the key's row lock
and ends it with KILL CONNECTION: the server rolls its transaction back,
which releases the key (and drops that transaction's uncommitted writes; the
holder's Commit then fails with dblock.ErrLockLost). Use it on a holder that
is stuck, e.g. a process frozen or cut off from the network whose session
would otherwise keep the lock until wait_timeout.

The holder is found as in "txlock locks": on MySQL from
performance_schema.data_locks (live); on MariaDB always as with
"txlock locks --identify", by queueing a probe behind the holder for at most
2 s so that INNODB_LOCK_WAITS names it, then withdrawing the probe. (The
INNODB_* views are a cache that can be older than the release: a holder read
from it may have released since. The probe's wait is in a cache fill made
after the probe started.) If nobody holds the key, release says so and
exits 0.

A connection is killed by id, and a pooled connection that committed the
key may be doing unrelated work by the time of the KILL. So right before the
KILL release checks that the connection is still in the transaction that
held the key. On MariaDB: PROCESSLIST (live) must show it with the QUERY_ID
and COMMAND it had before the probe began; every statement gets a new
QUERY_ID and a transaction ends only with a statement, so it has run
nothing since, not even a COMMIT. The check and the KILL are one statement
run in the server (BEGIN NOT ATOMIC ... KILL ... END). On MySQL: data_locks
must still show its transaction holding the row, read right before the KILL.
A connection that fails the check is left alone and the holder is named
again, up to 3 times: a holder that keeps running statements is not stuck,
and release kills nothing.

It asks for confirmation on stdin (y/N) unless --force is given, and again
if the holder named after the prompt is another transaction. It acts only
on the server named by --dsn or $` + envDSN + ` (never on the default), and
prints it first. What was killed is logged to stderr. Needs the PROCESS
privilege, and CONNECTION ADMIN (or SUPER) to kill other users'
connections.`,
		Example: `  txlock release --key 'resource=order:42'
  txlock release --key-user u-7 --key-operation refund
  txlock release --key global --force --table billing_locks`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := kf.exact()
			if err != nil {
				return err
			}
			return opts.destructive(cmd, "release", func(ctx context.Context, c *console) error {
				return (&releaser{c}).release(ctx, key, force)
			})
		},
	}
	kf.register(cmd.Flags(), "the key whose", "the key with exactly these fields")
	cmd.Flags().BoolVar(&force, "force", false, "kill without asking")
	return cmd
}

// releaser carries out "txlock release": it reports what it found on
// out, and asks and logs what it killed on log.
type releaser struct{ *console }

// holding is the holder of a key row as release sees it.
type holding struct {
	held bool
	conn int64
	trx  string
	via  string
	// base is the connection in PROCESSLIST before it was named (MariaDB):
	// the KILL happens only if it still shows the same.
	base procInfo
}

// findHolder returns who holds row id, if anyone. MySQL's data_locks is
// live. On MariaDB the cached INNODB_LOCK_WAITS may show a holder that has
// released since, whose pooled connection now does other work: killing it
// would be wrong. So on MariaDB the holder is always named by a probe
// queued behind it: the cache fill that shows the probe waiting was made
// after the probe started, so the blocker it names held the row then.
func (in *inspector) findHolder(ctx context.Context, id int64) (holding, error) {
	if !in.srv.MariaDB {
		entries, err := in.entries(ctx)
		if err != nil {
			return holding{}, err
		}
		for _, e := range entries {
			if e.rowID == id && !e.waiting {
				return holding{held: true, conn: e.conn, trx: e.trx, via: "performance_schema.data_locks"}, nil
			}
		}
		return holding{}, nil
	}
	h, err := in.identifyHolder(ctx, id, identifyWait)
	switch {
	case err != nil:
		return holding{}, err
	case h.found:
		return holding{held: true, conn: h.conn, trx: h.trx, via: "a probe queued behind it (INNODB_LOCK_WAITS)", base: h.base}, nil
	case h.notHeld || h.rowGone:
		return holding{}, nil
	case h.stale:
		return holding{}, fmt.Errorf("the row is held, but a probe queued behind its holder never appeared in INNODB_TRX within %v: MariaDB refreshes that cache only after 100 ms without reads, and other clients read it more often; try again", identifyWait)
	}
	return holding{}, fmt.Errorf("the row is held, but its holder did not appear in INNODB_LOCK_WAITS within %v (does this user have the PROCESS privilege?): %v", identifyWait, h.probeErr)
}

// killHolder kills h's connection if it still holds row id, checked right
// before the KILL (MariaDB: in the same server-side statement), and reports
// whether it did.
func (in *inspector) killHolder(ctx context.Context, id int64, h holding) (bool, error) {
	kill := "KILL CONNECTION " + strconv.FormatInt(h.conn, 10)
	if in.srv.MariaDB {
		q, ok := killIfUnchangedSQL(h.conn, h.base)
		if !ok {
			return false, nil // not in PROCESSLIST before it was named: name it again
		}
		var killed bool
		if err := in.db.QueryRowContext(ctx, q).Scan(&killed); err != nil {
			return false, killError(h.conn, err)
		}
		return killed, nil
	}
	entries, err := in.entries(ctx)
	if err != nil {
		return false, err
	}
	if !slices.ContainsFunc(entries, func(e lockEntry) bool {
		return e.rowID == id && !e.waiting && e.conn == h.conn && e.trx == h.trx
	}) {
		return false, nil
	}
	if _, err := in.db.ExecContext(ctx, kill); err != nil {
		return false, killError(h.conn, err)
	}
	return true, nil
}

// killError explains a failed KILL of connection conn.
func killError(conn int64, err error) error {
	return fmt.Errorf("KILL CONNECTION %d (killing another user's connection needs CONNECTION ADMIN or SUPER): %w", conn, err)
}

// describe returns a line about connection conn of transaction trx.
func (in *inspector) describe(ctx context.Context, conn int64, trx string) (string, error) {
	trxs, err := in.transactions(ctx)
	if err != nil {
		return "", err
	}
	procs, err := in.processes(ctx)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "connection %d", conn)
	if p, ok := procs[conn]; ok {
		fmt.Fprintf(&b, " (user %s, host %s", p.user, p.host)
		if p.db != "" {
			fmt.Fprintf(&b, ", db %s", p.db)
		}
		fmt.Fprintf(&b, ", %s for %s)", p.cmd, fsecs(&p.secs))
	}
	if t, ok := trxs[trx]; ok {
		fmt.Fprintf(&b, ", transaction %s open %s, %d row(s) locked", trx, secs(&t.age), t.rows)
	}
	return b.String(), nil
}

func (r *releaser) release(ctx context.Context, key dblock.Key, force bool) error {
	in := r.in
	fmt.Fprintf(r.log, "txlock: release %s of %s on %s (%s)\n", key, in.table, in.where, in.srv)
	h := lockkey.Fields(key).Hash()
	var id int64
	err := in.db.QueryRowContext(ctx, "SELECT id FROM `"+in.table+"` WHERE key_hash = ?", h[:]).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		_, err = fmt.Fprintf(r.out, "%s: nobody holds %s (it has no row in %s)\n", in.table, key, in.table)
		return err
	}
	if err != nil {
		return fmt.Errorf("looking up %s in %s: %w", key, in.table, err)
	}
	confirmed := map[string]bool{} // connection/transaction pairs the user agreed to kill
	for naming := 1; ; naming++ {
		holder, err := in.findHolder(ctx, id)
		if err != nil {
			return err
		}
		if !holder.held {
			if naming > 1 {
				_, err = fmt.Fprintf(r.out, "%s: %s was released meanwhile; nothing killed\n", in.table, key)
			} else {
				_, err = fmt.Fprintf(r.out, "%s: nobody holds %s (row %d)\n", in.table, key, id)
			}
			return err
		}
		who, err := in.describe(ctx, holder.conn, holder.trx)
		if err != nil {
			return err
		}
		fmt.Fprintf(r.out, "%s: %s (row %d) is held by %s; found through %s\n", in.table, key, id, who, holder.via)
		pair := strconv.FormatInt(holder.conn, 10) + "/" + holder.trx
		if !force && !confirmed[pair] {
			if !r.confirm(fmt.Sprintf("Kill connection %d?", holder.conn)) {
				return errors.New("not confirmed: nothing killed")
			}
			confirmed[pair] = true
		}
		killed, err := in.killHolder(ctx, id, holder)
		if err != nil {
			return err
		}
		if killed {
			return r.killed(ctx, key, id, holder.conn, who)
		}
		if naming == maxNamings {
			return fmt.Errorf("%s: the holder of %s ran statements or changed each of the %d times release checked it right before the KILL: it is working, not stuck; nothing killed", in.table, key, maxNamings)
		}
		fmt.Fprintf(r.out, "%s: connection %d ran a statement since it was named, or was not listed before (it may have committed and moved on): not killed; naming the holder again\n", in.table, holder.conn)
	}
}

// killed reports the kill of conn, which held key (row id), once the
// connection has left the process list.
func (r *releaser) killed(ctx context.Context, key dblock.Key, id, conn int64, who string) error {
	in := r.in
	fmt.Fprintf(r.log, "txlock: killed %s, which held %s (row %d of %s); the server rolls back its transaction\n", who, key, id, in.table)
	gone, err := in.waitGone(ctx, conn, goneWait)
	if err != nil {
		return err
	}
	if !gone {
		_, err = fmt.Fprintf(r.out, "%s: connection %d is still listed after %v (rolling back a large transaction?); check with txlock locks\n", in.table, conn, goneWait)
		return err
	}
	_, err = fmt.Fprintf(r.out, "%s: connection %d is gone; its hold on %s is released (a waiter, if any, has it now)\n", in.table, conn, key)
	return err
}

// waitGone waits up to d for connection conn to leave the process list.
func (in *inspector) waitGone(ctx context.Context, conn int64, d time.Duration) (bool, error) {
	deadline := time.Now().Add(d)
	for {
		var n int
		if err := in.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?", conn).Scan(&n); err != nil {
			return false, err
		}
		if n == 0 {
			return true, nil
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
