// Package dblock is a distributed lock backed by the MySQL or MariaDB server a
// service already runs.
//
// A lock is a row of the tb_lock table (created by package migrations), held
// with SELECT ... FOR UPDATE inside a transaction. Because that transaction
// can be the caller's own business transaction, the lock and the business
// writes commit or roll back together, and no extra connection is spent.
// The protocol, the server behaviour it rests on and its guarantees are
// described in the repository's docs/PROTOCOL.md.
//
// # Keys
//
// A [Key] names one lock. It has one field per granularity: [Resource]
// ("order:42"), [Operation] ("refund"), [Method] ("OrderService.Refund"),
// [User] ("u-7") and [Global] (the one system-wide key). Fields combine: a
// key with User "u-7" and Resource "order:42" is a lock of its own, distinct
// from either field alone.
//
// # Three ways to share a transaction
//
//   - [Locker.Do] opens a transaction, takes the lock as its first statement
//     and hands the transaction to fn; fn's writes commit with the release.
//   - [Locker.Do] under a context that already carries a transaction of the
//     Locker's database (an outer Do, or [WithTx]) joins it; the lock is
//     held until that transaction ends. A transaction of another database
//     does not count: Do then opens its own.
//   - [Locker.LockTx] takes the lock inside a transaction the caller opened
//     with gorm (or with database/sql: [Locker.Tx]); the caller's Commit or
//     Rollback releases it.
//
// [Locker.Lock] and [Locker.TryLock] return a [Lock] handle owning its own
// transaction, for code that cannot be written as a callback.
//
// # Without gorm: database/sql
//
// A service written with database/sql (sqlx, sqlc, bun) makes its Locker
// with [NewSQL] on its *sql.DB, and runs its queries in a lock's
// transaction through [SQL]: SQL(tx) of Do's fn tx or of [Lock.Tx] is the
// connection gorm itself uses for them, ExecContext, QueryContext,
// QueryRowContext and PrepareContext (sqlc's DBTX), with the same guards
// (statements refused with [ErrLockLost] after a loss, the lease kept).
// A *sql.Tx the service began itself becomes a handle of the Locker with
// [Locker.Tx], for LockTx(ctx, l.Tx(tx), key) and WithTx(ctx, l.Tx(tx)):
// the lock is released by the service's Commit or Rollback, and
// reentrancy, the keys remembered per *sql.Tx and the stale-snapshot check
// are those of a gorm transaction. A repository reaches the transaction in
// scope with [TxFrom] and SQL.
//
// # Release
//
// A lock is released only by the end of its transaction: COMMIT, ROLLBACK, or
// the server ending the session (a crashed or disconnected holder). There is
// no unlock statement that could be lost or replayed. A [Lock] dropped
// without Commit or Rollback is rolled back once it is unreachable.
//
// A statement of the holder that would end the transaction on the server
// (DDL and the other statements that commit implicitly, BEGIN, COMMIT,
// ROLLBACK, SET autocommit, also inside SET STATEMENT ... FOR, EXECUTE
// IMMEDIATE '...' or PREPARE ... FROM '...') is refused before it is sent:
// the server would release the lock and run what follows in autocommit.
// What a statement does cannot always be read from its text (CALL of a
// procedure, EXECUTE of a prepared statement, a second statement with
// multiStatements): such a statement runs in a guarded transaction, and
// if it ended the transaction the lock is lost with [ErrCommitUnknown]
// (what the holder wrote before it was committed by it) and nothing after
// it runs. A statement through Exec is checked right after it; one that
// returns rows, before COMMIT.
//
// # Reentrancy
//
// The context remembers which keys its transaction holds. A nested Do of a
// held key returns to fn at once, without a round trip to the server, in a
// transaction the Locker opened; in a caller's own transaction it sends one
// locking read, granted at once, which fails with [ErrNoTransaction] if the
// transaction has ended behind the context's back.
//
// # Waiting
//
// A blocked acquisition waits in the server's queue for the row. The wait
// is bounded by the least of: [WaitTimeout] (which covers the whole call:
// the pool connection, the row step and the server's wait), the context's
// deadline, the lease of the locks the transaction already holds, the DSN's
// readTimeout, and otherwise the server's innodb_lock_wait_timeout. Running
// out gives [ErrNotAcquired]; the transaction stays open with its other
// locks. A waiter whose context is cancelled is interrupted on the server
// (KILL QUERY from the Locker's side pool), so that it leaves the queue at
// once and its connection stays usable. [NoWait] and [Locker.TryLock] do
// not wait: on MariaDB a held row is answered at once (a lock-wait timeout
// of zero, which ends the statement only and leaves no lock); where that
// answer would end the transaction (innodb_rollback_on_timeout=ON, and
// MySQL) a held row is skipped with SKIP LOCKED instead.
//
// On a server with innodb_rollback_on_timeout=ON, a wait ended by
// innodb_lock_wait_timeout (error 1205) rolls the whole transaction back:
// the error then matches [ErrLockLost] as well as [ErrNotAcquired] when the
// transaction held other locks, and the Locker refuses every later
// statement of a transaction it opened, which would otherwise run in
// autocommit. WaitTimeout and the context's deadline end a wait with a
// statement timeout instead, which that setting does not affect.
//
// # Shared locks
//
// [Shared] takes keys in shared mode (LOCK IN SHARE MODE, FOR SHARE): any
// number of shared holders of a key at once, and none while an exclusive
// holder has it. A new shared request queues behind a waiting exclusive one,
// so writers are not starved. A shared acquisition of a key the transaction
// holds returns at once; an exclusive one of a key it holds shared is
// refused with [ErrUpgrade]. docs/MODES.md has the protocol.
//
// # Semaphores
//
// [Permits](n) takes one of n permits of a key: at most n holders at once,
// each released with its transaction, a dead holder's permit back as fast
// as a lock. n is the key's, fixed by its first user ([ErrPermits]). A
// free permit is taken in one round trip; otherwise the waiter queues on
// one permit in the server, in turn, and looks again every 500 ms. A
// semaphore is apart from the key's lock.
//
// # The hierarchy
//
// A lock table can make its keys contain each other: the global key
// contains every key, a single-field key the composite keys that set that
// field. With the hierarchy on (migrations.SetHierarchy, `txlock hierarchy
// on`), an acquisition also takes the keys containing its keys, shared, in
// one extra locking read and one order, so that Global taken exclusively
// excludes every holder. It is the table's setting: every locking read
// returns it, and a Locker that assumed the other one starts over, or in a
// caller's transaction fails with [ErrHierarchyChanged].
//
// # The lease
//
// A transaction the Locker opens (Do, DoMulti, Lock, TryLock) has a lease
// ([Lease], default 60 s): the server ends it once it has been idle that
// long (MariaDB's idle_transaction_timeout, MySQL's wait_timeout, set on the
// connection's session whenever the lock's first locking read shows it
// differs), and the holder learns of it first. The holder's side records
// when the server last answered, pings the connection (DO 1) before a
// statement when that answer is older than the margin (a fifth of the
// lease, at least 200 ms) and in the background when the holder is idle,
// and declares the lock lost at the lease minus the margin without an
// answer: before the server can free the row, with no clock
// synchronisation. [Lock.Lost] is then closed, [Lock.Err] wraps
// [ErrLockLost], Do's fn context is cancelled with cause ErrLockLost, and
// Commit refuses. So every statement may run for the lease minus twice the
// margin (36 s by default); choose a lease above your longest statement.
// Prepared statements (a gorm PrepareStmt session, PrepareContext through
// SQL) run outside the keepalive's sight: it does not ping within a third
// of the lease after one is bound or prepared, and the transaction is
// checked before COMMIT to be the one the Locker began. The
// session setting stays on the pooled connection after the lock.
//
// # Transactions that read before they lock
//
// Under REPEATABLE READ a transaction reads from a snapshot taken at its
// first read, which may predate the previous holder's commit. Do and Lock
// take the lock as the transaction's first statement. An acquisition
// joined into a transaction that may have read (LockTx, a Do under WithTx,
// a nested Do of a further key) is checked on MariaDB 10.6.18, 10.11.8 and
// later: the key's fencing counter is bumped in autocommit and read back in
// the transaction with a locking read under innodb_snapshot_isolation, set
// for that statement only. A transaction whose snapshot predates the bump
// fails with [ErrStaleSnapshot] and the server rolls it back; one that has
// not read yet gets no snapshot from the check, so its reads after the
// lock are fresh and any number of locks may follow. The check costs an
// autocommit write and a read; [NoPriorReads] skips it. MySQL has no such
// check: take locks before reading, or use READ COMMITTED.
//
// # Fencing tokens
//
// With [Fencing], an acquisition bumps the key's counter in tb_lock_fence in
// autocommit on the side pool while it holds the key, then reads it back in
// its transaction: that read proves the lock was still held after the bump,
// so a holder paused between its grant and its bump fails with
// [ErrLockLost] instead of returning a token a successor may already have
// exceeded. Tokens are strictly increasing per key in grant order (on a
// single server) and never reused, since a bump is never rolled back.
//
// # Elections
//
// [Locker.Election] returns the election of a key: [Election.Campaign]
// waits until the caller leads and returns a [Leadership], whose Done is
// closed when it ends and whose Token is its fencing token;
// [Leadership.Resign] hands the election on. [Election.Leader] answers the
// current leader's value ([ErrNoLeader] when nobody leads) and
// [Election.Observe] delivers each new leader's value, in order.
//
// A leadership is a server named lock (GET_LOCK) held by a connection the
// leadership pins, not a transaction: it holds no row lock, no read view
// and no undo, so it holds back neither purge nor anything else, however
// long it lasts (a Lock, a transaction holding a row lock, does hold purge
// back on MariaDB). Followers wait in GET_LOCK on connections of their
// own, in slices of 2 s; a cancelled campaign's wait is interrupted on the
// server. The named lock is unique per server: "txlock:" and the hex of
// SHA-256 of the schema, the lock table and the key. The pinned session's
// wait_timeout is the lease and a keepalive pings it every third of the
// lease: a leader that crashes is replaced within milliseconds (its
// connection closes), one cut off silently loses Done at its lease minus
// the margin, before the server ends its idle session at the lease and a
// follower can win. A leader whose session the server ends (KILL, a
// restart) learns it at its next keepalive, within a third of the lease,
// when a follower may lead already: its fencing token (the counter of
// Fencing locks of the same key) guards that. The leader's value is a
// committed row of <table>_leader naming its connection; Leader and
// Observe read the row whose conn_id is IS_USED_LOCK of the name.
// Campaign's context bounds the wait only; the Locker's Defaults (the
// lease) apply to the leadership. Named locks are local to a server:
// elections are refused on a Galera node. docs/ELECTION.md has the
// statements, the bounds and the figures.
//
// # Replicas and clusters
//
// A lock excludes only the holders that lock the same row on the same
// server. New refuses a read-only server ([ErrReadOnly], unless
// [AllowReadOnly]) and requires a mode on a Galera node; docs/HA.md says
// what each topology guarantees.
//
// # Galera
//
// Row locks are local to a Galera node. With [GaleraSingleWriter] all lock
// traffic goes to one node at a time, and locks are plain row locks there.
// With [GaleraMultiWriter] holders may be on several nodes at once: each
// holder also writes its lock row, so that of two overlapping holders the
// cluster lets the first to commit win and aborts the other. Such an abort
// is not always reported to the statement that meets it, and the session
// then runs later statements in autocommit; so in this mode a transaction
// the Locker opens runs with autocommit off and a savepoint set after the
// grant, which is released before COMMIT: a missing savepoint means the
// cluster aborted the transaction, which is rolled back with everything
// sent since ([ErrLockLost] and [ErrDeadlock]). A caller's own transaction
// cannot be checked that way, so LockTx and a Do under WithTx are refused
// in this mode. It costs four statements per transaction.
//
// # Scheduled jobs: MinInterval
//
// [MinInterval](d) makes a key's runs at least d apart, start to start,
// across every process, judged by the server's clock alone: a job that
// several replicas run on a ticker (or a cron library) runs once per
// interval, whichever replica's tick comes first. The acquisition, once
// granted, records the run in the key's row of the run table
// (<table>_run, migration 2) in the lock's own transaction, with one
// upsert that compares the last committed run with UTC_TIMESTAMP(6) (UTC,
// whatever the session's time zone). The record commits or rolls back with
// the job's writes, however the transaction ends (Do's commit,
// [Lock.Commit], the caller's Commit after [Locker.LockTx]): a run that
// rolled back does not count, and the next call may run at once. A call
// granted less than d after the last committed run fails with
// [ErrTooSoon], naming the key, the last run's server time and when the
// next is allowed, without running fn; test it with errors.Is to skip the
// turn. A transaction the Locker opened is then rolled back; a caller's
// transaction keeps the key, as after any LockTx, until it ends (and a
// Do joining it returns ErrTooSoon without rolling it back).
//
// A run is judged once per transaction: once a call with MinInterval has
// recorded the key's run, later calls with the key in the same
// transaction (nested, reentrant) are part of that run. A call with
// MinInterval on a key the transaction holds without a recorded run
// (taken without MinInterval, or refused with ErrTooSoon) is judged then,
// so that a refusal is never followed by a run in the same transaction.
// It applies to one key: DoMulti with several keys refuses it. Add
// [NoWait] to skip a turn while another replica is running the job
// rather than wait for it to finish (and then get ErrTooSoon). The
// interval counts whole microseconds; a server clock stepped back delays
// the next run by the step. It costs one statement per run, two when too
// soon; a lock table without the run table (migrated to version 1 only)
// gives [ErrTableMissing]. The upsert reports its outcome through
// LAST_INSERT_ID(expr), so the session's LAST_INSERT_ID() is changed until
// the job's first insert. See docs/SCHEDULED_AND_MAXHOLD.md.
//
// # A bound on holding: MaxHold
//
// [MaxHold](d) takes the lock away from a holder still holding it d after
// its grant, alive or not, so that a stuck holder (a hung call, a
// deadlocked goroutine, a write through the pool instead of tx on a small
// pool, waiting for the connection the lock holds) cannot pin a key
// forever. The holder learns first: [Lock.Lost] is closed, [Lock.Err] and
// the cause of fn's context wrap [ErrLockLost] and name MaxHold(d), and
// statements on the lock's transaction are refused. Then the transaction
// is ended on the server: its connection is killed (KILL CONNECTION from
// the side pool, which interrupts a statement the holder is stuck in) and
// discarded, and its writes roll back; only then can another holder be
// granted the key. Commit after that refuses with ErrLockLost ("not
// committed"); a Commit already on its way when the bound runs out
// completes. The bound costs one statement at the grant (the connection's
// id). The side pool's user must be allowed to kill the lock's
// connection (the same user, or CONNECTION_ADMIN / SUPER).
//
// MaxHold bounds a transaction the Locker opened (Do, DoMulti, Lock,
// TryLock), and a Do that joins one: the whole transaction is bounded,
// and the bound that runs out first wins, whichever call set it. Passed
// to a call in a caller's transaction (LockTx, Do under WithTx) it is
// refused before anything is locked: the Locker does not end a
// transaction it does not own (bound it with the transaction's context);
// a Locker-wide MaxHold given through [Defaults] leaves such
// transactions unbounded instead. Off by default.
// # Who holds a lock: Holder and Label
//
// [Locker.Holder] names the connection holding a key: its id, user, host,
// the start of its transaction and the [Label] of the Locker that locks on
// it, with the connections queued for the key; [ErrNotHeld] when nobody
// holds it. [Locker.Holders] lists the held keys matching a filter. The
// answer was true at a moment during the call. Each Locker writes its
// label (by default "<hostname>:<pid>") to the session table,
// <table>_session, once per connection, from the side pool and off the
// acquisition's path (a goroutine of the Locker's writes what
// acquisitions queue; the server waits at most a second for the table's
// locks, and writes pause for a minute after a failure): a label never
// holds up a lock, and is in the table a few milliseconds after the
// connection's first use (Holder waits for this Locker's queued labels).
// The connection of a pool is named by one SELECT CONNECTION_ID() when
// the Locker first uses it; that of a caller's transaction by its first
// locking read. Times are UTC. Rows from before the server's last start
// are ignored (connection ids restart with the server), and rows of
// connections gone are pruned at most every 10 minutes. Without the session table (schema at version 1) locks work and
// one warning says to run `txlock migrate up`. The Locker's log lines
// carry the label as "label".
//
// MySQL 8 shows every lock (performance_schema.data_locks): one statement.
// MariaDB shows a lock only while someone waits for it, so Holder first
// tries the key's row with SKIP LOCKED in autocommit (a free row is then
// locked for that one statement: a TryLock of the key at that instant
// fails), and for a held row queues a locking read
// behind the holder on a connection of the Locker's pool until the
// server's views show who blocks it (measured: 30 ms, or about 190 ms
// right after another read of those views), then withdraws it. The probe waits behind every earlier waiter and is rolled
// back at once if granted. Those views are a cache the server refreshes
// only after 100 ms without reads: a client that reads them more often
// keeps Holder from naming the holder ([ErrHolderUnknown]). Holder needs
// the PROCESS privilege. docs/HOLDERS.md gives the statements.
//
// A key held shared ([Shared]) may have several holders: Holder sets
// [Holder.Shared], names the one whose transaction began first and the
// others in [Holder.SharedWith]. MariaDB's lock views give a transaction
// that has written nothing and holds no exclusive lock the id 0, shared
// by every such transaction: its shared holders are not named (Holder
// returns ErrHolderUnknown; Holders lists the key with ConnID 0).
//
// # Errors
//
// Outcomes are sentinel errors matched with [errors.Is]: [ErrNotAcquired],
// [ErrDeadlock], [ErrLockLost], [ErrCommitUnknown], [ErrNotHeld],
// [ErrInvalidKey], [ErrTableMissing], [ErrStaleSnapshot], [ErrReadOnly],
// [ErrNotPrimary], [ErrNoTransaction], [ErrTooSoon], [ErrHolderUnknown],
// [ErrNoLeader]. Errors coming from the server also wrap the driver's
// *mysql.MySQLError, reachable with [errors.As].
package dblock
