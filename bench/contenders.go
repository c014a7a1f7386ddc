package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/bsm/redislock"
	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/decorator"
)

// A cycleFunc runs one cycle of a contender on one goroutine: acquire,
// [business work,] release. It returns how long the acquisition took
// (from the start of the cycle until the lock was held). ctx is the run's
// context; stop is done when the measurement has ended, for contenders
// that poll.
type cycleFunc func(ctx, stop context.Context) (time.Duration, error)

// A contender is one way of doing the work of a cell.
type contender struct {
	id    string // short, for -only/-skip and JSON
	label string // for tables and the plot
	kind  string // "floor", "baseline" (no lock), "reference", "control", "txlock", "peer"
	// only, when set, limits the contender to one workload.
	only workload
	// extra are the special workloads (shared, semaphore, hierarchy) the
	// contender runs in; nobody else does.
	extra []workload
	// start prepares g goroutines of cell c (pools, pinned connections) and
	// returns their cycle functions and a function that releases them.
	start func(ctx context.Context, e *env, c cell) ([]cycleFunc, func(), error)
}

// runs reports whether the contender runs in cell c: a baseline without a
// lock has no hot key; a special workload (shared, semaphore, hierarchy)
// compares the row lock's modes, raw and through txlock, and nothing else.
func (ct *contender) runs(c cell) bool {
	if c.work.special() {
		return slices.Contains(ct.extra, c.work)
	}
	return (ct.only == 0 || ct.only == c.work) && !(c.hot && ct.kind == "baseline")
}

// errStopped is returned by a polling cycle that gave up because the
// measurement ended; it is not counted.
var errStopped = errors.New("stopped")

// allContenders lists every contender in the order of the tables.
func allContenders() []*contender {
	return []*contender{
		{id: "raw", label: "raw row lock (floor)", kind: "floor", extra: everyMode, start: startRaw(forUpdate)},
		{id: "raw-again", label: "raw row lock again (A/A control)", kind: "control", extra: everyMode, start: startRaw(forUpdate)},
		{id: "raw-shared", label: "raw row lock, LOCK IN SHARE MODE (shared floor)", kind: "floor", only: sharedRead, extra: []workload{sharedRead}, start: startRaw(inShareMode)},
		{id: "raw-permits", label: "raw semaphore: SKIP LOCKED over the permit rows, else FOR UPDATE of one in turn (semaphore floor)", kind: "floor",
			only: permitHold, extra: []workload{permitHold}, start: startRawPermits},
		{id: "raw-hier", label: "raw row lock with the hierarchy's statements: the global key LOCK IN SHARE MODE, then the key FOR UPDATE (hierarchy floor)", kind: "floor",
			only: hierLock, extra: []workload{hierLock}, start: startRawHier},
		{id: "raw-implicit", label: "raw row lock, no BEGIN (autocommit=0; the stretch's potential)", kind: "reference", start: startRawImplicit},
		{id: "biz-alone", label: "business tx alone, no lock", kind: "baseline", only: lockBusiness, start: startRaw("")},
		{id: "gorm-biz-alone", label: "gorm business tx alone, no lock", kind: "baseline", only: lockBusiness, start: startGormBiz},
		{id: "do", label: "txlock Do", kind: "txlock", extra: everyMode, start: startTxlock(modeDo, false)},
		{id: "do-shared", label: "txlock Do, Shared()", kind: "txlock", only: sharedRead, extra: []workload{sharedRead}, start: startTxlock(modeDo, false, dblock.Shared())},
		{id: "do-permits", label: "txlock Do, Permits(n)", kind: "txlock", only: permitHold, extra: []workload{permitHold}, start: startDoPermits},
		{id: "do-hier", label: "txlock Do, hierarchy on", kind: "txlock", only: hierLock, extra: []workload{hierLock}, start: startTxlockWith(modeDo, false, true)},
		{id: "do-ip", label: "txlock Do, interpolateParams", kind: "txlock", start: startTxlock(modeDo, true)},
		{id: "locktx", label: "txlock LockTx", kind: "txlock", extra: []workload{sharedRead}, start: startTxlock(modeLockTx, false)},
		{id: "locktx-shared", label: "txlock LockTx, Shared()", kind: "txlock", only: sharedRead, extra: []workload{sharedRead}, start: startTxlock(modeLockTx, false, dblock.Shared())},
		{id: "locktx-ip", label: "txlock LockTx, interpolateParams", kind: "txlock", start: startTxlock(modeLockTx, true)},
		{id: "decorator", label: "txlock decorator.WithLock", kind: "txlock", start: startTxlock(modeDecorator, false)},
		{id: "decorator-ip", label: "txlock decorator.WithLock, interpolateParams", kind: "txlock", start: startTxlock(modeDecorator, true)},
		{id: "getlock", label: "GET_LOCK pattern (go-mysql-lock design, re-implemented)", kind: "peer", start: startGetLock},
		{id: "lease", label: "lease row (ShedLock / JDBC registry design, re-implemented)", kind: "peer", start: startLease},
		{id: "redislock", label: "Redis bsm/redislock + business tx (reference)", kind: "peer", start: startRedis},
	}
}

// everyMode: the raw floor and Do run in every special workload, as the
// exclusive lock the others are compared with.
var everyMode = []workload{sharedRead, permitHold, hierLock}

// selectContenders applies -only and -skip; the floor always runs.
func selectContenders(o *options, e *env) []*contender {
	var out []*contender
	for _, ct := range allContenders() {
		if ct.kind != "floor" {
			if o.only != nil && !o.only.MatchString(ct.id) {
				continue
			}
			if o.skip != nil && o.skip.MatchString(ct.id) {
				continue
			}
			if ct.id == "redislock" && e.redis == nil {
				continue
			}
			if ct.kind == "control" && !o.aa {
				continue
			}
		}
		out = append(out, ct)
	}
	return out
}

// pinned opens a pool of g connections on cfg and pins one to each
// goroutine.
func pinned(ctx context.Context, cfg *gomysql.Config, g int) (*sql.DB, []*sql.Conn, func(), error) {
	db, err := openDB(cfg, g)
	if err != nil {
		return nil, nil, nil, err
	}
	conns := make([]*sql.Conn, g)
	release := func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		db.Close()
	}
	for i := range conns {
		if conns[i], err = db.Conn(ctx); err != nil {
			release()
			return nil, nil, nil, err
		}
	}
	return db, conns, release, nil
}

// The locking clauses of the raw floor.
const (
	forUpdate   = "FOR UPDATE"
	inShareMode = "LOCK IN SHARE MODE" // MariaDB; MySQL 8 accepts it too
)

// startRaw is the floor: database/sql on pinned connections with
// interpolateParams, BEGIN; SELECT id ... FOR UPDATE (or the locking
// clause given); [the business statement;] COMMIT. Without a clause, it
// is the business transaction alone.
func startRaw(clause string) func(ctx context.Context, e *env, c cell) ([]cycleFunc, func(), error) {
	return func(ctx context.Context, e *env, c cell) ([]cycleFunc, func(), error) {
		_, conns, release, err := pinned(ctx, e.ip, c.g)
		if err != nil {
			return nil, nil, err
		}
		lock := clause != ""
		lockSQL := "SELECT id FROM `" + e.lockTable + "` WHERE id = ? " + clause
		fns := make([]cycleFunc, c.g)
		for i := range fns {
			conn, k := conns[i], e.key(c, i)
			args := e.bizArgs(k)
			fns[i] = func(ctx, _ context.Context) (time.Duration, error) {
				t0 := time.Now()
				tx, err := conn.BeginTx(ctx, nil)
				if err != nil {
					return 0, err
				}
				var acq time.Duration
				if lock {
					var id int64
					if err := tx.QueryRowContext(ctx, lockSQL, k.lockID).Scan(&id); err != nil {
						tx.Rollback()
						return 0, err
					}
					acq = time.Since(t0)
				}
				if err := business(ctx, e, tx, c.work, k, args); err != nil {
					tx.Rollback()
					return 0, err
				}
				return acq, tx.Commit()
			}
		}
		return fns, release, nil
	}
}

// startRawImplicit is the floor without its BEGIN round trip: the
// connections run with autocommit=0, so the locking read opens the
// transaction itself: SELECT id ... FOR UPDATE; [UPDATE;] COMMIT. It
// measures what hiding the lock's round trip (the stretch goal)
// could gain; it needs connections that no other code shares.
func startRawImplicit(ctx context.Context, e *env, c cell) ([]cycleFunc, func(), error) {
	_, conns, release, err := pinned(ctx, e.ip, c.g)
	if err != nil {
		return nil, nil, err
	}
	for _, conn := range conns {
		if _, err := conn.ExecContext(ctx, "SET SESSION autocommit = 0"); err != nil {
			release()
			return nil, nil, err
		}
	}
	lockSQL := "SELECT id FROM `" + e.lockTable + "` WHERE id = ? FOR UPDATE"
	fns := make([]cycleFunc, c.g)
	for i := range fns {
		conn, k := conns[i], e.key(c, i)
		args := e.bizArgs(k)
		rollback := func(ctx context.Context, err error) (time.Duration, error) {
			_, rerr := conn.ExecContext(ctx, "ROLLBACK")
			return 0, errors.Join(err, rerr)
		}
		fns[i] = func(ctx, _ context.Context) (time.Duration, error) {
			t0 := time.Now()
			var id int64
			if err := conn.QueryRowContext(ctx, lockSQL, k.lockID).Scan(&id); err != nil {
				return rollback(ctx, err)
			}
			acq := time.Since(t0)
			if err := business(ctx, e, conn, c.work, k, args); err != nil {
				return rollback(ctx, err)
			}
			_, err := conn.ExecContext(ctx, "COMMIT")
			return acq, err
		}
	}
	return fns, release, nil
}

// startGormBiz is the business transaction alone through gorm, as a
// service writes it: what txlock adds to it is the lock's cost.
func startGormBiz(ctx context.Context, e *env, c cell) ([]cycleFunc, func(), error) {
	gdb, sqlDB, err := openGorm(e.plain, c.g)
	if err != nil {
		return nil, nil, err
	}
	if err := warm(ctx, sqlDB, c.g); err != nil {
		sqlDB.Close()
		return nil, nil, err
	}
	fns := make([]cycleFunc, c.g)
	for i := range fns {
		k := e.key(c, i)
		args := e.bizArgs(k)
		fns[i] = func(ctx, _ context.Context) (time.Duration, error) {
			tx := gdb.WithContext(ctx).Begin()
			if tx.Error != nil {
				return 0, tx.Error
			}
			if err := tx.Exec(k.bizSQL, args...).Error; err != nil {
				tx.Rollback()
				return 0, err
			}
			return 0, tx.Commit().Error
		}
	}
	return fns, func() { sqlDB.Close() }, nil
}

type txlockMode int

const (
	modeDo txlockMode = iota
	modeLockTx
	modeDecorator
)

// bizState is one goroutine's state for the txlock contenders: the
// decorator's request, and what the Do closure records.
type bizState struct {
	k    keyRef
	args []any
	work workload
	hold time.Duration // the semaphore workload's
	t0   time.Time
	acq  time.Duration
}

// startTxlock runs Do, LockTx or a decorated call, with opts, on a gorm
// handle opened with the user's DSN (plain), or with interpolateParams
// (ip).
func startTxlock(mode txlockMode, ip bool, opts ...dblock.LockOption) func(ctx context.Context, e *env, c cell) ([]cycleFunc, func(), error) {
	return startTxlockWith(mode, ip, false, opts...)
}

// startTxlockWith is startTxlock on the run's lock table, or with hier
// on the hierarchy's.
func startTxlockWith(mode txlockMode, ip, hier bool, opts ...dblock.LockOption) func(ctx context.Context, e *env, c cell) ([]cycleFunc, func(), error) {
	return func(ctx context.Context, e *env, c cell) ([]cycleFunc, func(), error) {
		cfg, table := e.plain, e.lockTable
		if ip {
			cfg = e.ip
		}
		if hier {
			table = e.hierTable
		}
		gdb, sqlDB, err := openGorm(cfg, c.g)
		if err != nil {
			return nil, nil, err
		}
		l, err := dblock.New(gdb, dblock.Table(table))
		if err != nil {
			sqlDB.Close()
			return nil, nil, err
		}
		release := func() { l.Close(); sqlDB.Close() }
		if err := warm(ctx, sqlDB, c.g); err != nil {
			release()
			return nil, nil, err
		}
		var decorated func(context.Context, *bizState) (struct{}, error)
		if mode == modeDecorator {
			decorated = decorate(l, gdb, opts)
		}
		fns := make([]cycleFunc, c.g)
		for i := range fns {
			s := &bizState{k: e.key(c, i), work: c.work, hold: e.permitHold}
			s.args = e.bizArgs(s.k)
			switch mode {
			case modeDo:
				fn := func(ctx context.Context, tx *gorm.DB) error {
					s.acq = time.Since(s.t0)
					return gormBusiness(tx, s)
				}
				fns[i] = func(ctx, _ context.Context) (time.Duration, error) {
					s.t0 = time.Now()
					err := l.Do(ctx, s.k.key, fn, opts...)
					return s.acq, err
				}
			case modeLockTx:
				fns[i] = func(ctx, _ context.Context) (time.Duration, error) {
					t0 := time.Now()
					tx := gdb.WithContext(ctx).Begin()
					if tx.Error != nil {
						return 0, tx.Error
					}
					if err := l.LockTx(ctx, tx, s.k.key, opts...); err != nil {
						tx.Rollback()
						return 0, err
					}
					acq := time.Since(t0)
					if err := gormBusiness(tx, s); err != nil {
						tx.Rollback()
						return 0, err
					}
					return acq, tx.Commit().Error
				}
			case modeDecorator:
				fns[i] = func(ctx, _ context.Context) (time.Duration, error) {
					s.t0 = time.Now()
					_, err := decorated(ctx, s)
					return s.acq, err
				}
			}
		}
		return fns, release, nil
	}
}

// decorate wraps a service method the way a service is wired: the method
// writes through dblock.DB(ctx, db), so its UPDATE runs in the lock's
// transaction.
func decorate(l *dblock.Locker, gdb *gorm.DB, opts []dblock.LockOption) func(context.Context, *bizState) (struct{}, error) {
	return decorator.WithLock(l,
		func(_ context.Context, s *bizState) dblock.Key { return s.k.key },
		func(ctx context.Context, s *bizState) (struct{}, error) {
			s.acq = time.Since(s.t0)
			return struct{}{}, gormBusiness(dblock.DB(ctx, gdb), s)
		}, opts...)
}

// sqlRunner is where the database/sql contenders run their business
// statement: a transaction, or a pinned connection.
type sqlRunner interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// business runs the business statement of workload w on k's row through
// q: the UPDATE (business), the SELECT (shared), the hold (semaphore), or
// nothing (lock only, hierarchy).
func business(ctx context.Context, e *env, q sqlRunner, w workload, k keyRef, args []any) error {
	switch w {
	case lockBusiness:
		_, err := q.ExecContext(ctx, k.bizSQL, args...)
		return err
	case sharedRead:
		var v int64
		return q.QueryRowContext(ctx, k.readSQL, args...).Scan(&v)
	case permitHold:
		return holdPermit(ctx, e.permitHold)
	}
	return nil
}

// gormBusiness is business through gorm, in tx.
func gormBusiness(tx *gorm.DB, s *bizState) error {
	switch s.work {
	case lockBusiness:
		return tx.Exec(s.k.bizSQL, s.args...).Error
	case sharedRead:
		var v int64
		return tx.Raw(s.k.readSQL, s.args...).Row().Scan(&v)
	case permitHold:
		return holdPermit(tx.Statement.Context, s.hold)
	}
	return nil
}

// businessTx runs the business transaction of the peers on a
// database/sql pool: BEGIN; UPDATE; COMMIT.
func businessTx(ctx context.Context, db *sql.DB, k keyRef, args []any) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, k.bizSQL, args...); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// getLockTimeout is the GET_LOCK timeout in seconds. go-mysql-lock's Obtain
// passes -1 (wait forever), which MariaDB does not accept (GET_LOCK
// returns NULL, Obtain fails with ErrMySQLInternalError); on MariaDB its
// users call ObtainTimeout, as this does.
const getLockTimeout = 30

// startGetLock re-implements the design of go-mysql-lock: each Obtain
// takes a connection of its own from the pool, runs
// SELECT COALESCE(GET_LOCK(?, timeout), 2) on it and starts a goroutine that
// pings that connection while the lock is held; Release runs
// DO RELEASE_LOCK(?) and returns the connection. The business
// transaction runs on a second connection. Both pools use
// interpolateParams (the peer's best case).
func startGetLock(ctx context.Context, e *env, c cell) ([]cycleFunc, func(), error) {
	lockDB, err := openDB(e.ip, c.g)
	if err != nil {
		return nil, nil, err
	}
	bizDB, err := openDB(e.ip, c.g)
	if err != nil {
		lockDB.Close()
		return nil, nil, err
	}
	release := func() { lockDB.Close(); bizDB.Close() }
	if err := errors.Join(warm(ctx, lockDB, c.g), warm(ctx, bizDB, c.g)); err != nil {
		release()
		return nil, nil, err
	}
	fns := make([]cycleFunc, c.g)
	for i := range fns {
		k, biz := e.key(c, i), c.work == lockBusiness
		args := e.bizArgs(k)
		fns[i] = func(ctx, _ context.Context) (time.Duration, error) {
			t0 := time.Now()
			conn, err := lockDB.Conn(ctx)
			if err != nil {
				return 0, err
			}
			defer conn.Close()
			var res int
			if err := conn.QueryRowContext(ctx, "SELECT COALESCE(GET_LOCK(?, ?), 2)", k.name, getLockTimeout).Scan(&res); err != nil {
				return 0, err
			}
			if res != 1 {
				return 0, fmt.Errorf("GET_LOCK returned %d", res)
			}
			acq := time.Since(t0)
			done := make(chan struct{})
			go refresher(conn, done)
			var bizErr error
			if biz {
				bizErr = businessTx(ctx, bizDB, k, args)
			}
			close(done)
			_, err = conn.ExecContext(ctx, "DO RELEASE_LOCK(?)", k.name)
			return acq, errors.Join(bizErr, err)
		}
	}
	return fns, release, nil
}

// refresher pings the lock's connection every second while the lock is
// held, as go-mysql-lock does (its default refresh interval).
func refresher(conn *sql.Conn, done <-chan struct{}) {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			pctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := conn.PingContext(pctx)
			cancel()
			if err != nil {
				return
			}
			t.Reset(time.Second)
		}
	}
}

// startLease re-implements the lease-row design of ShedLock (and of the
// JDBC lock registries): take with an autocommit UPDATE of lock_until that
// only matches an expired lease, run the business transaction, release
// with another autocommit UPDATE. A held key is polled every -poll
// (ShedLock does not wait at all; Spring's JDBC registry polls every 100
// ms by default, so this is generous). The queries are ShedLock's for
// MySQL with the database's clock (usingDbTime).
func startLease(ctx context.Context, e *env, c cell) ([]cycleFunc, func(), error) {
	db, err := openDB(e.ip, c.g)
	if err != nil {
		return nil, nil, err
	}
	if err := warm(ctx, db, c.g); err != nil {
		db.Close()
		return nil, nil, err
	}
	take := "UPDATE `" + e.leaseTable + "` SET lock_until = NOW(3) + INTERVAL 30 SECOND, locked_at = NOW(3), locked_by = ? " +
		"WHERE name = ? AND lock_until <= NOW(3)"
	free := "UPDATE `" + e.leaseTable + "` SET lock_until = NOW(3) WHERE name = ?"
	fns := make([]cycleFunc, c.g)
	for i := range fns {
		k, biz := e.key(c, i), c.work == lockBusiness
		args := e.bizArgs(k)
		owner := "bench-" + strconv.Itoa(i)
		fns[i] = func(ctx, stop context.Context) (time.Duration, error) {
			t0 := time.Now()
			for {
				res, err := db.ExecContext(ctx, take, owner, k.name)
				if err != nil {
					return 0, err
				}
				if n, _ := res.RowsAffected(); n == 1 {
					break
				}
				if err := pause(stop, e.leasePoll); err != nil {
					return 0, err
				}
			}
			acq := time.Since(t0)
			var bizErr error
			if biz {
				bizErr = businessTx(ctx, db, k, args)
			}
			_, err := db.ExecContext(ctx, free, k.name)
			return acq, errors.Join(bizErr, err)
		}
	}
	return fns, func() { db.Close() }, nil
}

// pause waits d, or returns errStopped when stop is done first.
func pause(stop context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-stop.Done():
		return errStopped
	case <-t.C:
		return nil
	}
}

// startRedis takes the lock in Redis with github.com/bsm/redislock
// (retrying every -poll on a held key) and runs the business transaction
// on a database/sql pool.
func startRedis(ctx context.Context, e *env, c cell) ([]cycleFunc, func(), error) {
	db, err := openDB(e.ip, c.g)
	if err != nil {
		return nil, nil, err
	}
	rc := e.redisClient(c.g)
	release := func() { db.Close(); rc.Close() }
	if err := warm(ctx, db, c.g); err != nil {
		release()
		return nil, nil, err
	}
	if err := rc.Ping(ctx).Err(); err != nil {
		release()
		return nil, nil, err
	}
	locker := redislock.New(rc)
	opts := &redislock.Options{RetryStrategy: redislock.LinearBackoff(e.leasePoll)}
	fns := make([]cycleFunc, c.g)
	for i := range fns {
		k, biz := e.key(c, i), c.work == lockBusiness
		args := e.bizArgs(k)
		fns[i] = func(ctx, stop context.Context) (time.Duration, error) {
			t0 := time.Now()
			lock, err := locker.Obtain(stop, k.name, 30*time.Second, opts)
			if err != nil {
				if stop.Err() != nil {
					return 0, errStopped
				}
				return 0, err
			}
			acq := time.Since(t0)
			var bizErr error
			if biz {
				bizErr = businessTx(ctx, db, k, args)
			}
			return acq, errors.Join(bizErr, lock.Release(ctx))
		}
	}
	return fns, release, nil
}
