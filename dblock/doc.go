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
// # Errors
//
// Outcomes are sentinel errors matched with [errors.Is]: [ErrNotAcquired]
// (NoWait, TryLock or a wait timeout), [ErrDeadlock] (the server chose this
// transaction as a deadlock victim and rolled it back), [ErrLockLost],
// [ErrInvalidKey], [ErrTableMissing], [ErrStaleSnapshot]. Errors coming from
// the server also wrap the driver's *mysql.MySQLError, reachable with
// [errors.As].
package dblock
