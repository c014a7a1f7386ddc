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
	"github.com/txlock/txlock/migrations"
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
		kf           keyFlags
		force        bool
		permitHolder int64
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

A key held shared (dblock.Shared) is released only when every shared holder
is gone: release lists them all, asks once for all of them, and kills each
that passes the check (those that ran a statement meanwhile are working:
they are spared, and named). On MariaDB a shared holder whose transaction
has written nothing cannot be named (its lock views give every such
transaction the id 0): release then refuses the key and kills nothing, even
the shared holders it can name, since killing those alone would not release
it; "txlock locks" lists the candidates.

A key's semaphore (dblock.Permits) is apart from its lock: release ends
the lock's holders only. When nobody holds the lock but permits of the
key's semaphore are held, release names their holders and refuses: a
semaphore's holders run side by side by design, and killing all of them
would stop work that is not stuck. End the stuck one with --permit-holder
CONN ("txlock locks" lists the holders, mode SEM): release checks that
connection CONN holds a permit of the key, then kills it as above (checked
right before the KILL, after confirmation); its permit goes to a waiter.

It asks for confirmation on stdin (y/N) unless --force is given, and again
if the holder named after the prompt is another transaction. It acts only
on the server named by --dsn or $` + envDSN + ` (never on the default), and
prints it first. What was killed is logged to stderr. Needs the PROCESS
privilege, and CONNECTION ADMIN (or SUPER) to kill other users'
connections.`,
		Example: `  txlock release --key 'resource=order:42'
  txlock release --key-user u-7 --key-operation refund
  txlock release --key global --force --table billing_locks
  txlock release --key 'operation=export' --permit-holder 4711`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := kf.exact()
			if err != nil {
				return err
			}
			return opts.destructive(cmd, "release", func(ctx context.Context, c *console) error {
				return (&releaser{c}).release(ctx, key, force, permitHolder)
			})
		},
	}
	kf.register(cmd.Flags(), "the key whose", "the key with exactly these fields")
	cmd.Flags().BoolVar(&force, "force", false, "kill without asking")
	cmd.Flags().Int64Var(&permitHolder, "permit-holder", 0, "end this connection, which holds a permit of the key's semaphore (dblock.Permits), instead of the key's lock holder")
	return cmd
}

// releaser carries out "txlock release": it reports what it found on
// out, and asks and logs what it killed on log.
type releaser struct{ *console }

// holding is a holder of a key row, or of a permit row, as release sees
// it.
type holding struct {
	conn   int64
	trx    string
	row    int64 // the row it holds
	permit bool  // row is a permit row (permit table), not a key row
	shared bool  // it holds the row shared, maybe beside others
	// base is the connection in PROCESSLIST before it was named (MariaDB):
	// the KILL happens only if it still shows the same.
	base procInfo
}

// holders are the holders of a key row as release sees them: one
// exclusive holder, or the shared holders it could name; or the holder of
// a permit that release was asked to end.
type holders struct {
	list []holding
	// unnamedShared: MariaDB shows the row held shared by transactions
	// that have written nothing, which it gives the id 0 that all such
	// transactions share: they cannot be named, nor killed.
	unnamedShared bool
	via           string
	// where is the row held, for reports ("row 7"), and row for the log
	// ("row 7 of tb_lock").
	where, row string
}

func (hs holders) held() bool { return len(hs.list) > 0 || hs.unnamedShared }

func (hs holders) shared() bool { return hs.unnamedShared || len(hs.list) > 0 && hs.list[0].shared }

// conns returns the holders' connection ids, as text.
func (hs holders) conns() string {
	ids := make([]string, len(hs.list))
	for i, h := range hs.list {
		ids[i] = strconv.FormatInt(h.conn, 10)
	}
	return strings.Join(ids, ", ")
}

// findHolders returns who holds row id, if anyone. MySQL's data_locks is
// live. On MariaDB the cached INNODB_LOCK_WAITS may show a holder that has
// released since, whose pooled connection now does other work: killing it
// would be wrong. So on MariaDB the holders are always named by a probe
// queued behind them: the cache fill that shows the probe waiting was made
// after the probe started, so the blockers it names held the row then.
func (in *inspector) findHolders(ctx context.Context, id int64) (holders, error) {
	if !in.srv.MariaDB {
		entries, err := in.entries(ctx)
		if err != nil {
			return holders{}, err
		}
		hs := holders{via: "performance_schema.data_locks"}
		for _, e := range entries {
			if e.rowID != id || e.permit || e.waiting {
				continue
			}
			if e.mode == "X" {
				// Nobody else holds the row (its own shared lock aside).
				return holders{list: []holding{{conn: e.conn, trx: e.trx, row: id}}, via: hs.via}, nil
			}
			if !slices.ContainsFunc(hs.list, func(h holding) bool { return h.trx == e.trx }) {
				hs.list = append(hs.list, holding{conn: e.conn, trx: e.trx, row: id, shared: true})
			}
		}
		return hs, nil
	}
	h, err := in.identifyHolder(ctx, in.table, id, identifyWait)
	switch {
	case err != nil:
		return holders{}, err
	case h.found:
		hs := holders{unnamedShared: h.unnamedShared, via: "a probe queued behind it (INNODB_LOCK_WAITS)"}
		for _, b := range h.holders {
			hs.list = append(hs.list, holding{conn: b.conn, trx: b.trx, row: id, shared: b.shared, base: b.base})
		}
		return hs, nil
	case h.notHeld || h.rowGone:
		return holders{}, nil
	}
	return holders{}, namingError(h)
}

// namingError is why identifyHolder, which did not name the holder of a
// held row, did not.
func namingError(h holderOf) error {
	if h.stale {
		return fmt.Errorf("the row is held, but a probe queued behind its holder never appeared in INNODB_TRX within %v: MariaDB refreshes that cache only after 100 ms without reads, and other clients read it more often; try again", identifyWait)
	}
	return fmt.Errorf("the row is held, but its holder did not appear in INNODB_LOCK_WAITS within %v (does this user have the PROCESS privilege?): %v", identifyWait, h.probeErr)
}

// killHolder kills h's connection if it still holds its row, checked
// right before the KILL (MariaDB: in the same server-side statement), and
// reports whether it did.
func (in *inspector) killHolder(ctx context.Context, h holding) (bool, error) {
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
		return e.rowID == h.row && e.permit == h.permit && !e.waiting && e.conn == h.conn && e.trx == h.trx
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

// release ends the holders of key's lock or, with permitHolder, the
// connection permitHolder that holds a permit of key's semaphore.
func (r *releaser) release(ctx context.Context, key dblock.Key, force bool, permitHolder int64) error {
	in := r.in
	fmt.Fprintf(r.log, "txlock: release %s of %s on %s (%s)\n", key, in.table, in.where, in.srv)
	if permitHolder != 0 {
		return r.end(ctx, force, r.permitTarget(key, permitHolder))
	}
	h := lockkey.Fields(key).Hash()
	var id int64
	err := in.db.QueryRowContext(ctx, "SELECT id FROM `"+in.table+"` WHERE key_hash = ?", h[:]).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		if err := r.refuseSemaphore(ctx, key); err != nil {
			return err
		}
		_, err = fmt.Fprintf(r.out, "%s: nobody holds %s (it has no row in %s)\n", in.table, key, in.table)
		return err
	}
	if err != nil {
		return fmt.Errorf("looking up %s in %s: %w", key, in.table, err)
	}
	// Under the hierarchy the global key and single-field keys are held
	// shared by every holder of a key they contain: releasing one would
	// kill all of those.
	container := key.Global || countFields(key) == 1
	hierarchy := false
	if container {
		if on, err := migrations.Hierarchy(ctx, in.db, migrations.Table(in.table)); err == nil {
			hierarchy = on
		}
	}
	return r.end(ctx, force, target{name: key.String(), find: func(ctx context.Context, naming int) (holders, error) {
		hs, err := in.findHolders(ctx, id)
		hs.where, hs.row = fmt.Sprintf("row %d", id), fmt.Sprintf("row %d of %s", id, in.table)
		switch {
		case err != nil:
			return hs, err
		case !hs.held() && naming == 1:
			return hs, r.refuseSemaphore(ctx, key)
		case hs.unnamedShared:
			return hs, unnamedSharedError(in.table, key, id, hs)
		case hierarchy && hs.shared():
			return hs, fmt.Errorf("%s: %s is held shared, and the table's hierarchy is on (txlock hierarchy): every holder of a key it contains holds it shared, "+
				"so releasing it would end all of them; release the stuck key itself (txlock locks shows it); nothing killed", in.table, key)
		}
		return hs, nil
	}})
}

// countFields returns how many of key's fields are set (Global counts as
// none).
func countFields(key dblock.Key) int {
	n := 0
	for _, f := range []string{key.Resource, key.Operation, key.Method, key.User} {
		if f != "" {
			n++
		}
	}
	return n
}

// A target is what release ends the holders of: a key's lock, or the
// permit of a key's semaphore that one connection holds.
type target struct {
	name string // the key, or "a permit of" the key
	// find names the holders, at the naming-th time (from 1); an error
	// refuses the release.
	find func(ctx context.Context, naming int) (holders, error)
}

// end names t's holders, asks (unless force), and kills those that still
// hold it right before the KILL; a holder that ran statements meanwhile is
// named again, up to maxNamings times.
func (r *releaser) end(ctx context.Context, force bool, t target) error {
	in := r.in
	confirmed := map[string]bool{} // connection/transaction pairs the user agreed to kill
	for naming := 1; ; naming++ {
		hs, err := t.find(ctx, naming)
		if err != nil {
			return err
		}
		if !hs.held() {
			if naming > 1 {
				_, err = fmt.Fprintf(r.out, "%s: %s was released meanwhile; nothing killed\n", in.table, t.name)
			} else {
				_, err = fmt.Fprintf(r.out, "%s: nobody holds %s (%s)\n", in.table, t.name, hs.where)
			}
			return err
		}
		whos, err := r.report(ctx, t.name, hs)
		if err != nil {
			return err
		}
		if !force && !r.confirmed(hs, confirmed) {
			return errors.New("not confirmed: nothing killed")
		}
		var killed, spared []int
		for i, h := range hs.list {
			ok, err := in.killHolder(ctx, h)
			if err != nil {
				return err
			}
			if ok {
				killed = append(killed, i)
				fmt.Fprintf(r.log, "txlock: killed %s, which held %s (%s); the server rolls back its transaction\n", whos[i], t.name, hs.row)
			} else {
				spared = append(spared, i)
			}
		}
		if len(killed) > 0 {
			return r.killed(ctx, t.name, hs, killed, spared)
		}
		if naming == maxNamings {
			return fmt.Errorf("%s: the holder of %s ran statements or changed each of the %d times release checked it right before the KILL: it is working, not stuck; nothing killed", in.table, t.name, maxNamings)
		}
		for _, i := range spared {
			fmt.Fprintf(r.out, "%s: connection %d ran a statement since it was named, or was not listed before (it may have committed and moved on): not killed; naming the holder again\n", in.table, hs.list[i].conn)
		}
	}
}

// report prints who holds what (hs.where), and returns a line about each
// holder.
func (r *releaser) report(ctx context.Context, what string, hs holders) ([]string, error) {
	in := r.in
	whos := make([]string, len(hs.list))
	for i, h := range hs.list {
		who, err := in.describe(ctx, h.conn, h.trx)
		if err != nil {
			return nil, err
		}
		whos[i] = who
	}
	if !hs.shared() {
		fmt.Fprintf(r.out, "%s: %s (%s) is held by %s; found through %s\n", in.table, what, hs.where, whos[0], hs.via)
		return whos, nil
	}
	fmt.Fprintf(r.out, "%s: %s (%s) is held shared by %d transaction(s); found through %s:\n", in.table, what, hs.where, len(whos), hs.via)
	for _, who := range whos {
		fmt.Fprintf(r.out, "  %s\n", who)
	}
	return whos, nil
}

// confirmed asks whether to kill hs's connections, unless every one of
// them was agreed to before (confirmed, which it completes).
func (r *releaser) confirmed(hs holders, confirmed map[string]bool) bool {
	asked := false
	for _, h := range hs.list {
		if !confirmed[strconv.FormatInt(h.conn, 10)+"/"+h.trx] {
			asked = true
		}
	}
	if !asked {
		return true
	}
	question := fmt.Sprintf("Kill connection %d?", hs.list[0].conn)
	if len(hs.list) > 1 {
		question = fmt.Sprintf("Kill connections %s (every holder: the key is held shared)?", hs.conns())
	}
	if !r.confirm(question) {
		return false
	}
	for _, h := range hs.list {
		confirmed[strconv.FormatInt(h.conn, 10)+"/"+h.trx] = true
	}
	return true
}

// unnamedSharedError is release's refusal of a key held shared by
// transactions that MariaDB cannot name.
func unnamedSharedError(table string, key dblock.Key, id int64, hs holders) error {
	also := ""
	if len(hs.list) > 0 {
		also = fmt.Sprintf(" (and by connection(s) %s, which alone would not release it)", hs.conns())
	}
	return fmt.Errorf("%s: %s (row %d) is held shared by transactions that have written nothing%s: MariaDB's lock views give every such transaction the id 0, "+
		"so release cannot tell which connections hold it; nothing killed. txlock locks --key lists them among the candidates (open transactions holding row locks): "+
		"end the stuck one with KILL CONNECTION once you are sure it is a holder", table, key, id, also)
}

// killed reports the kill of the holders killed (indexes in hs.list) of
// what, once their connections have left the process list, and the
// holders spared, which ran a statement since they were named.
func (r *releaser) killed(ctx context.Context, what string, hs holders, killed, spared []int) error {
	in := r.in
	for n, i := range killed {
		conn := hs.list[i].conn
		gone, err := in.waitGone(ctx, conn, goneWait)
		if err != nil {
			return err
		}
		switch {
		case !gone:
			fmt.Fprintf(r.out, "%s: connection %d is still listed after %v (rolling back a large transaction?); check with txlock locks\n", in.table, conn, goneWait)
		case n == len(killed)-1 && len(spared) == 0:
			fmt.Fprintf(r.out, "%s: connection %d is gone; its hold on %s is released (a waiter, if any, has it now)\n", in.table, conn, what)
		default:
			fmt.Fprintf(r.out, "%s: connection %d is gone; its hold on %s is released\n", in.table, conn, what)
		}
	}
	for _, i := range spared {
		fmt.Fprintf(r.out, "%s: connection %d ran a statement since it was named (working, not stuck, or it released): not killed; it holds %s shared until its transaction ends, if it still does\n", in.table, hs.list[i].conn, what)
	}
	return nil
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
