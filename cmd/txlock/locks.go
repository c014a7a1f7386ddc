package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/txlock/txlock/dblock"
)

// locksFlags are the flags of "txlock locks".
type locksFlags struct {
	kf       keyFlags
	watch    bool
	interval time.Duration
	asJSON   bool
	probe    bool
	identify bool
}

// newLocksCmd returns "txlock locks".
func newLocksCmd(opts *rootOptions) *cobra.Command {
	var lf locksFlags
	cmd := &cobra.Command{
		Use:   "locks",
		Short: "Show the held locks and their waiters",
		Long:  locksHelp,
		Example: `  txlock locks
  txlock locks --key 'resource=order:42'
  txlock locks --key-user u-7 --watch --interval 500ms
  txlock locks --identify
  txlock locks --json | jq '.keys[] | select(.waiters | length > 0)'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			filter, err := lf.kf.filter()
			if err != nil {
				return err
			}
			if lf.interval <= 0 {
				return fmt.Errorf("--interval must be positive, got %v", lf.interval)
			}
			ctx := cmd.Context()
			return opts.withServer(ctx, func(db *sql.DB, where string, srv serverInfo) error {
				if lf.watch && srv.MariaDB && lf.interval < minMariaDBInterval {
					return fmt.Errorf("--interval %v: on MariaDB it must be at least %v, or the INNODB_* cache, which the server refreshes only after 100 ms without reads, would never be refreshed", lf.interval, minMariaDBInterval)
				}
				in := &inspector{db: db, srv: srv, table: opts.table, where: where, probe: lf.probe, identify: lf.identify}
				return lf.print(ctx, cmd.OutOrStdout(), in, filter)
			})
		},
	}
	f := cmd.Flags()
	lf.kf.register(f, "show only the keys whose", "show only the keys that have these fields (the others may be anything)")
	f.BoolVar(&lf.watch, "watch", false, "print a new snapshot every --interval until interrupted (with --json: one JSON object per line)")
	f.DurationVar(&lf.interval, "interval", time.Second, "time between snapshots with --watch (MariaDB: at least 200ms)")
	f.BoolVar(&lf.asJSON, "json", false, "print JSON for scripts instead of a table")
	f.BoolVar(&lf.probe, "probe", true, "MariaDB: find held keys that nobody waits for with a SKIP LOCKED probe (takes short row locks on free key rows)")
	f.BoolVar(&lf.identify, "identify", false, "MariaDB: name the holder of keys that nobody waits for by queueing briefly behind it")
	return cmd
}

// minMariaDBInterval is the shortest --watch interval on MariaDB.
const minMariaDBInterval = 200 * time.Millisecond

// print prints a snapshot of the keys matching filter, and with --watch
// another every --interval until ctx is done.
func (lf *locksFlags) print(ctx context.Context, out io.Writer, in *inspector, filter dblock.Key) error {
	for first := true; ; first = false {
		snap, err := in.snapshot(ctx, filter)
		if err != nil {
			if !first && ctx.Err() != nil {
				return nil // interrupted while watching
			}
			return err
		}
		if lf.asJSON {
			err = writeJSON(out, snap, !lf.watch)
		} else {
			if !first {
				fmt.Fprintln(out)
			}
			err = writeLocksTable(out, snap)
		}
		if err != nil || !lf.watch {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(lf.interval):
		}
	}
}

// locksHelp is the long help of "txlock locks".
const locksHelp = `locks shows every held key of the lock table and every connection waiting
for one: the key (its granularity columns), its row id, the holding
connection's id, user and host, how long its transaction has been open and
how long it has been idle, and each waiting connection with how long it has
waited.

MODE is how a holder holds the key, or a waiter asks for it: X
(exclusively, the default) or S (shared, dblock.Shared: several transactions
may hold the key at once, and each is listed on a line of its own).

A semaphore (dblock.Permits) is listed apart from its key's lock, in mode
SEM: its key (read from the lock table's row of the permit rows' key_hash),
"SEM held/permits" (e.g. SEM 2/5) on each of its holders' lines, a line per
held permit (its holder, or "?" when nobody waits for that permit: --identify
names it), and its waiters. In JSON: mode "SEM", permits, permits_held,
key_hash, and each holder's and waiter's permit_slot. Its permit rows are
found as key rows are: the lock views, the SKIP LOCKED probe (over the
permit table's rows too) and --identify.

LABEL is the Label of the txlock Locker that first locked on the connection
(by default "<hostname>:<pid>"), from the <table>_session table; a row
written before the server's last start is ignored (connection ids restart
with the server), and a connection without a current row shows "-".

What the server lets us see:

MySQL 8: performance_schema.data_locks lists every row lock, granted or
waiting, and data_lock_waits who blocks whom: holders are shown whether or
not someone waits for them (performance_schema must be ON).

MariaDB: information_schema.INNODB_LOCKS lists only the locks that someone
waits for or that block someone. A contended key therefore shows its
holder and its waiters (from INNODB_LOCK_WAITS, INNODB_TRX and PROCESSLIST),
but the holder of a key that nobody waits for is in none of these views.
Such keys are found by a probe (on by default, --probe=false turns it off):
"SELECT id ... FOR UPDATE SKIP LOCKED" over the key rows in a READ COMMITTED
transaction that is rolled back at once; a row it skips is held (the permit
table's rows are probed the same way). The probe row-locks the free rows for
the duration of one statement (about a millisecond per 500 rows), so a locker
arriving then waits that long, and a TryLock or NoWait call arriving then
finds the key, or every permit, held. Their
holder is shown as "?", and the open transactions that hold row locks and are
not otherwise accounted for are listed as candidates. --identify names the
holder: for each such key it queues a locking read behind the holder for at
most a second, reads the holder from INNODB_LOCK_WAITS, and withdraws (KILL
QUERY on its own connection). It becomes a waiter for that moment: if the
holder releases meanwhile, the probe gets the lock for a few milliseconds,
and a shared request that arrives while it waits queues behind it.

Shared holders on MariaDB: a transaction that has written nothing and holds
no exclusive lock has the id 0 in INNODB_TRX, INNODB_LOCKS and
INNODB_LOCK_WAITS, and so has every other such transaction (idle readers
included); the shared locks of several of them on one row are one entry.
Such holders cannot be named, by the views or by --identify: the key is
shown with a holder "?" in mode S, a note, and the candidates (among which
they are). Shared holders whose transactions have written something, or
hold an exclusive lock, have an id and are named.

MariaDB's INNODB_TRX, INNODB_LOCKS and INNODB_LOCK_WAITS are a cache: the
server refreshes it at most every 100 ms, and only when nobody has read it
for 100 ms. A read less than 100 ms after the previous one (by anyone) gets
the old data, so while other clients poll these views more often than every
100 ms the cache is not refreshed at all. locks therefore reads them once
per snapshot, --identify polls every 150 ms, and --watch needs an --interval
of at least 200 ms on MariaDB. PROCESSLIST is live.

So that a holder that has released since is never named, locks opens a
transaction of its own (a consistent snapshot, which locks nothing) and uses
a fill of the cache that shows it, made after the snapshot began, waiting up
to 1 s for one; and it names a holder only if PROCESSLIST shows its
connection with the same QUERY_ID and COMMAND before that fill and after:
every statement gets a new QUERY_ID and a transaction ends only with a
statement, so it is still in the transaction that held the key. Otherwise
the key's holder is "?" and a note says why; with a cache that was not
refreshed in time no holder, waiter or candidate is taken from it at all.

A snapshot is assembled from several queries and is not atomic: a lock
released or taken during it may be shown or not. Needs the PROCESS
privilege (without it only your own connections show).`
