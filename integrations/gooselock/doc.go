// Package gooselock keeps goose migrations on MySQL and MariaDB from running
// twice at once: a goose lock.Locker held as a txlock row lock.
//
//	l, err := gooselock.New()
//	if err != nil { ... }
//	p, err := goose.NewProvider(goose.DialectMySQL, db, fsys, goose.WithLocker(l))
//	if err != nil { ... }
//	results, err := p.Up(ctx) // one process at a time migrates
//
// Lock takes the key dblock.Operation("goose-migrations") (option Key) in a
// transaction of its own, on a connection of goose's *sql.DB that the
// migrations do not use (MySQL commits DDL implicitly, so the lock cannot
// live in the migrations' transactions), and holds it until Unlock. Other
// processes wait in the server's queue: at most 5 minutes, as goose's
// Postgres lockers (option WaitTimeout), and no later than the deadline of
// the context given to Provider.Up. A process that dies releases at once
// (the server rolls its transaction back); one that stops talking to the
// server silently loses the lock within its lease (option Lease, 60 s by
// default). A lock lost while goose runs is logged (option Logger) and
// returned by Unlock, so Provider.Up reports it.
//
// txlock's lock table (tb_lock, option Table) is created by the first Lock
// when it is missing. The pool needs room for three connections at once:
// goose's own, the lock's, and a short-lived one for txlock's bookkeeping.
// The lock's connection goes back to the pool with the lease as its
// session's idle bound (MariaDB idle_transaction_timeout, MySQL
// wait_timeout), as after any txlock lock.
package gooselock
