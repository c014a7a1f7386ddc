package main

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/txlock/txlock/dblock"
)

// identifyWait bounds how long release waits behind a holder to name it
// (MariaDB).
const identifyWait = 2 * time.Second

// goneWait bounds how long release waits for a killed connection to leave
// the process list.
const goneWait = 5 * time.Second

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
from it may have released since, and its pooled connection now serve other
work. The probe's wait is in a cache fill made after the probe started.) If
nobody holds the key, release says so and exits 0. A connection is killed
by id, so a holder that commits in the instant between being named and the
KILL loses its connection, not its lock: release kills right after naming.

It asks for confirmation on stdin (y/N) unless --force is given; before
killing after a prompt it checks that the same transaction still holds the
key. What was killed is logged to stderr. Needs the PROCESS privilege, and
CONNECTION ADMIN (or SUPER) to kill other users' connections.`,
		Example: `  txlock release --key 'resource=order:42'
  txlock release --key-user u-7 --key-operation refund
  txlock release --key global --force --table billing_locks`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := kf.exact()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			return opts.withServer(ctx, func(db *sql.DB, where string, srv serverInfo) error {
				r := &releaser{
					in:    &inspector{db: db, srv: srv, table: opts.table, where: where},
					out:   cmd.OutOrStdout(),
					log:   cmd.ErrOrStderr(),
					stdin: cmd.InOrStdin(),
				}
				return r.release(ctx, key, force)
			})
		},
	}
	kf.register(cmd.Flags(), "the key whose", "the key with exactly these fields")
	cmd.Flags().BoolVar(&force, "force", false, "kill without asking")
	return cmd
}

// releaser carries out "txlock release".
type releaser struct {
	in    *inspector
	out   io.Writer // what was found
	log   io.Writer // the prompt and what was killed
	stdin io.Reader
}

// holding is the holder of a key row as release sees it.
type holding struct {
	held bool
	conn int64
	trx  string
	via  string
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
	h, err := identifyHolder(ctx, in.db, in.lockTableName(), in.table, id, identifyWait)
	switch {
	case err != nil:
		return holding{}, err
	case h.found:
		return holding{held: true, conn: h.conn, trx: h.trx, via: "a probe queued behind it (INNODB_LOCK_WAITS)"}, nil
	case h.notHeld || h.rowGone:
		return holding{}, nil
	case h.stale:
		return holding{}, fmt.Errorf("the row is held, but a probe queued behind its holder never appeared in INNODB_TRX within %v: MariaDB refreshes that cache only after 100 ms without reads, and other clients read it more often; try again", identifyWait)
	}
	return holding{}, fmt.Errorf("the row is held, but its holder did not appear in INNODB_LOCK_WAITS within %v (does this user have the PROCESS privilege?): %v", identifyWait, h.probeErr)
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
	h := key.Hash()
	var id int64
	err := in.db.QueryRowContext(ctx, "SELECT id FROM `"+in.table+"` WHERE key_hash = ?", h[:]).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		_, err = fmt.Fprintf(r.out, "%s: nobody holds %s (it has no row in %s)\n", in.table, key, in.table)
		return err
	}
	if err != nil {
		return fmt.Errorf("looking up %s in %s: %w", key, in.table, err)
	}
	holder, err := in.findHolder(ctx, id)
	if err != nil {
		return err
	}
	if !holder.held {
		_, err = fmt.Fprintf(r.out, "%s: nobody holds %s (row %d)\n", in.table, key, id)
		return err
	}
	who, err := in.describe(ctx, holder.conn, holder.trx)
	if err != nil {
		return err
	}
	fmt.Fprintf(r.out, "%s: %s (row %d) is held by %s; found through %s\n", in.table, key, id, who, holder.via)
	if !force {
		fmt.Fprintf(r.log, "Kill connection %d? [y/N] ", holder.conn)
		answer, _ := bufio.NewReader(r.stdin).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
			return errors.New("not confirmed: nothing killed")
		}
		// Time has passed: make sure the same transaction still holds it.
		again, err := in.findHolder(ctx, id)
		if err != nil {
			return err
		}
		if !again.held {
			_, err = fmt.Fprintf(r.out, "%s: %s was released meanwhile; nothing killed\n", in.table, key)
			return err
		}
		if again.conn != holder.conn || again.trx != holder.trx {
			return fmt.Errorf("%s changed hands meanwhile (now connection %d, transaction %s): nothing killed; run release again", key, again.conn, again.trx)
		}
	}
	if _, err := in.db.ExecContext(ctx, "KILL CONNECTION "+strconv.FormatInt(holder.conn, 10)); err != nil {
		return fmt.Errorf("KILL CONNECTION %d (killing another user's connection needs CONNECTION ADMIN or SUPER): %w", holder.conn, err)
	}
	fmt.Fprintf(r.log, "txlock: killed %s, which held %s (row %d of %s); the server rolls back its transaction\n", who, key, id, in.table)
	gone, err := in.waitGone(ctx, holder.conn, goneWait)
	if err != nil {
		return err
	}
	if !gone {
		_, err = fmt.Fprintf(r.out, "%s: connection %d is still listed after %v (rolling back a large transaction?); check with txlock locks\n", in.table, holder.conn, goneWait)
		return err
	}
	_, err = fmt.Fprintf(r.out, "%s: connection %d is gone; its hold on %s is released (a waiter, if any, has it now)\n", in.table, holder.conn, key)
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
