// Package dblock is a distributed lock backed by the MySQL or MariaDB server a
// service already runs.
//
// A lock is a row of the tb_lock table (created by package migrations), held
// with SELECT ... FOR UPDATE inside a transaction. Because that transaction
// can be the caller's own business transaction, the lock and the business
// writes commit or roll back together, and no extra connection is spent.
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
//   - [Locker.Do] under a context that already carries a transaction (an outer
//     Do, or [WithTx]) joins it; the lock is held until that transaction ends.
//   - [Locker.LockTx] takes the lock inside a transaction the caller opened
//     with gorm; the caller's Commit or Rollback releases it.
//
// [Locker.Lock] and [Locker.TryLock] return a [Lock] handle owning its own
// transaction, for code that cannot be written as a callback.
//
// # Release
//
// A lock is released only by the end of its transaction: COMMIT, ROLLBACK, or
// the server ending the session (a crashed or disconnected holder). There is
// no unlock statement that could be lost or replayed.
//
// # Reentrancy
//
// The context remembers which keys its transaction holds. A nested Do of a
// held key returns to fn at once, without a round trip to the server.
//
// # Replicas and clusters
//
// A lock excludes only the holders that lock the same row on the same
// server. New reads where it is ([Locker.Topology]) and refuses two setups
// where that would silently fail:
//
//   - A read-only server (read_only ON), most likely a replica: locks taken
//     there are not seen by the holders on the primary. New returns
//     [ErrReadOnly] unless [AllowReadOnly] is given. A holder whose server
//     becomes read-only while it holds the lock (a failover that fences the
//     old primary) gets [ErrLockLost] at its next write or at COMMIT
//     (error 1290), with its writes not committed; accounts with SUPER
//     (MySQL, MariaDB before 10.11), CONNECTION_ADMIN (MySQL) or
//     READ_ONLY ADMIN (MariaDB) are not stopped by read_only
//     (Topology.ReadOnlyBypass).
//   - A Galera node (wsrep_on=ON), where row locks are local to a node. Pass
//     [GaleraSingleWriter] when all lock traffic goes to one node at a time,
//     or [GaleraMultiWriter] when it may reach several: each holder then also
//     writes its lock row, so that certification lets only one of two
//     overlapping holders commit, and the other gets [ErrLockLost]. A node
//     that leaves the cluster's primary component (a partition) answers
//     1047: its holders get [ErrLockLost], new acquisitions there
//     [ErrNotPrimary]. Such a holder learns it only when its node sees the
//     view change (evs.suspect_timeout, 5 s by default), about when the
//     majority can commit again; fencing tokens ([Fencing]) stay unique and
//     increasing across nodes, since each bump is certified.
//
// In a transaction the Locker opened (Do, Lock, TryLock), once a statement
// has failed with a deadlock (1213), 1290 or 1047, the lock is lost and
// Commit never reports success: on Galera a COMMIT after a brute-force
// abort may answer OK and commit nothing, so it is not sent. A caller's own
// transaction (LockTx, WithTx) is the caller's to commit: treat such an
// error there as the end of the transaction.
//
// # Errors
//
// Outcomes are sentinel errors matched with [errors.Is]: [ErrNotAcquired]
// (NoWait, TryLock or a wait timeout), [ErrDeadlock] (the server chose this
// transaction as a deadlock victim and rolled it back), [ErrLockLost],
// [ErrInvalidKey], [ErrTableMissing], [ErrStaleSnapshot], [ErrReadOnly],
// [ErrNotPrimary], [ErrNoTransaction]. Errors coming from the server also
// wrap the driver's *mysql.MySQLError, reachable with
// [errors.As].
package dblock
