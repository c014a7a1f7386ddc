package dblock_test

// Micro-benchmarks of the hot path, against the test server (see
// internal/testdb): go test -run '^$' -bench . -benchmem ./dblock
//
// Every benchmark also reports rt/op, the round trips to the server per
// operation, counted by a wrapper around the driver on a second Locker (so
// that the timed loop runs on the plain driver), and the baselines tell
// what gorm itself costs: Do's allocations beyond BenchmarkDo/gorm-begin-
// commit are txlock's.

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"

	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/testdb"
)

// benchDB is one benchmark's server handles: a gorm handle on the plain
// DSN, one with interpolateParams, and one whose driver counts round trips.
type benchDB struct {
	table   string
	plain   *gorm.DB
	ip      *gorm.DB
	counted *gorm.DB
	// countedSide is the side pool of the counted handle's Lockers.
	countedSide *sql.DB
	trips       *atomic.Int64
}

func openBench(b *testing.B) *benchDB {
	b.Helper()
	dsn, err := testdb.DSN()
	if err != nil {
		b.Skip(err)
	}
	cfg, err := gomysql.ParseDSN(dsn)
	if err != nil {
		b.Fatal(err)
	}
	cfg.InterpolateParams = false
	open := func(dial gorm.Dialector) *gorm.DB {
		gdb, err := gorm.Open(dial, &gorm.Config{Logger: logger.Discard})
		if err != nil {
			b.Fatal(err)
		}
		sqlDB, err := gdb.DB()
		if err != nil {
			b.Fatal(err)
		}
		sqlDB.SetMaxIdleConns(4)
		b.Cleanup(func() { sqlDB.Close() })
		return gdb
	}
	d := &benchDB{trips: new(atomic.Int64)}
	d.plain = open(mysql.New(mysql.Config{DSNConfig: cfg.Clone()}))
	ipCfg := cfg.Clone()
	ipCfg.InterpolateParams = true
	d.ip = open(mysql.New(mysql.Config{DSNConfig: ipCfg}))
	connector, err := gomysql.NewConnector(cfg.Clone())
	if err != nil {
		b.Fatal(err)
	}
	counted := sql.OpenDB(countingConnector{connector, d.trips})
	d.counted = open(mysql.New(mysql.Config{Conn: counted}))
	// The Locker's side pool is counted too: an acquisition's round trips
	// include its side statements.
	d.countedSide = sql.OpenDB(countingConnector{connector, d.trips})
	b.Cleanup(func() { d.countedSide.Close() })
	d.table = testdb.Table(b, d.plain)
	return d
}

func (d *benchDB) locker(b *testing.B, gdb *gorm.DB) *dblock.Locker {
	b.Helper()
	opts := []dblock.Option{dblock.Table(d.table)}
	if gdb == d.counted {
		opts = append(opts, dblock.SideDB(d.countedSide))
	}
	l, err := dblock.New(gdb, opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	return l
}

// roundTrips runs op on the counting handle (after one warm-up call) and
// reports its round trips per call as rt/op.
func (d *benchDB) roundTrips(b *testing.B, op func(gdb *gorm.DB, l *dblock.Locker) error) {
	b.Helper()
	l := d.locker(b, d.counted)
	if err := op(d.counted, l); err != nil {
		b.Fatal(err)
	}
	const n = 20
	before := d.trips.Load()
	for range n {
		if err := op(d.counted, l); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(d.trips.Load()-before)/n, "rt/op")
}

// bench runs op b.N times after a warm-up call, and reports the heap the
// loop retained (live bytes after a GC, end minus start): it must not grow
// with the number of acquisitions.
func bench(b *testing.B, gdb *gorm.DB, l *dblock.Locker, op func(gdb *gorm.DB, l *dblock.Locker) error) {
	b.Helper()
	if err := op(gdb, l); err != nil {
		b.Fatal(err)
	}
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := op(gdb, l); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&m1)
	b.ReportMetric(float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc)), "retained-B")
}

func noop(context.Context, *gorm.DB) error { return nil }

// BenchmarkDo is the uncontended Do of one key with an empty fn, beside
// gorm doing the same statements by hand: what Do adds is txlock's cost.
func BenchmarkDo(b *testing.B) {
	d := openBench(b)
	key := dblock.Resource("bench:do")
	ctx := context.Background()
	// The row id, for the hand-written statements.
	setup := d.locker(b, d.plain)
	if err := setup.Do(ctx, key, noop); err != nil {
		b.Fatal(err)
	}
	var id int64
	if err := d.plain.Raw("SELECT id FROM `"+d.table+"` WHERE resource = ?", key.Resource).Scan(&id).Error; err != nil || id == 0 {
		b.Fatalf("row id of %s: %d, %v", key, id, err)
	}
	lockSQL := fmt.Sprintf("SELECT id FROM `%s` WHERE id = %d FOR UPDATE", d.table, id)
	// A service's request context can be cancelled: database/sql then
	// watches it, and txlock tags its waiting statement and watches the
	// transaction's end.
	cctx, cancel := context.WithCancel(ctx)
	b.Cleanup(cancel)

	cases := []struct {
		name string
		ip   bool
		op   func(gdb *gorm.DB, l *dblock.Locker) error
	}{
		// gorm's own transaction: its allocations are the baseline.
		{"gorm-begin-commit", false, func(gdb *gorm.DB, _ *dblock.Locker) error {
			tx := gdb.WithContext(ctx).Begin()
			if tx.Error != nil {
				return tx.Error
			}
			return tx.Commit().Error
		}},
		// The statements Do sends, written by hand on gorm's transaction.
		{"gorm-begin-lock-commit", false, func(gdb *gorm.DB, _ *dblock.Locker) error {
			tx := gdb.WithContext(ctx).Begin()
			if tx.Error != nil {
				return tx.Error
			}
			var got int64
			if err := tx.Statement.ConnPool.QueryRowContext(ctx, lockSQL).Scan(&got); err != nil {
				tx.Rollback()
				return err
			}
			return tx.Commit().Error
		}},
		{"Do", false, func(_ *gorm.DB, l *dblock.Locker) error { return l.Do(ctx, key, noop) }},
		{"Do-interpolateParams", true, func(_ *gorm.DB, l *dblock.Locker) error { return l.Do(ctx, key, noop) }},
		{"gorm-begin-commit-cancelable-ctx", false, func(gdb *gorm.DB, _ *dblock.Locker) error {
			tx := gdb.WithContext(cctx).Begin()
			if tx.Error != nil {
				return tx.Error
			}
			return tx.Commit().Error
		}},
		{"Do-cancelable-ctx", false, func(_ *gorm.DB, l *dblock.Locker) error { return l.Do(cctx, key, noop) }},
		{"LockTx", false, func(gdb *gorm.DB, l *dblock.Locker) error {
			tx := gdb.WithContext(ctx).Begin()
			if tx.Error != nil {
				return tx.Error
			}
			if err := l.LockTx(ctx, tx, key); err != nil {
				tx.Rollback()
				return err
			}
			return tx.Commit().Error
		}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			gdb := d.plain
			if c.ip {
				gdb = d.ip
			}
			bench(b, gdb, d.locker(b, gdb), c.op)
			d.roundTrips(b, c.op)
		})
	}
}

// BenchmarkReentrant is a nested acquisition of a key the context's
// transaction already holds: no round trip, well under a microsecond.
func BenchmarkReentrant(b *testing.B) {
	d := openBench(b)
	key := dblock.Resource("bench:reentrant")
	ctx := context.Background()
	for _, c := range []struct {
		name  string
		inner func(ctx context.Context, tx *gorm.DB, l *dblock.Locker) error
	}{
		{"Do", func(ctx context.Context, _ *gorm.DB, l *dblock.Locker) error { return l.Do(ctx, key, noop) }},
		{"LockTx", func(ctx context.Context, tx *gorm.DB, l *dblock.Locker) error { return l.LockTx(ctx, tx, key) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			for _, gdb := range []*gorm.DB{d.plain, d.counted} {
				l := d.locker(b, gdb)
				err := l.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
					if err := c.inner(ctx, tx, l); err != nil { // warm
						return err
					}
					if gdb == d.counted {
						before := d.trips.Load()
						for range 100 {
							if err := c.inner(ctx, tx, l); err != nil {
								return err
							}
						}
						b.ReportMetric(float64(d.trips.Load()-before)/100, "rt/op")
						return nil
					}
					b.ReportAllocs()
					b.ResetTimer()
					for b.Loop() {
						if err := c.inner(ctx, tx, l); err != nil {
							return err
						}
					}
					b.StopTimer()
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDoParallel is Do from GOMAXPROCS goroutines at once, each on a
// key of its own: the Locker's shared state (key cache, statements) under
// concurrent use.
func BenchmarkDoParallel(b *testing.B) {
	d := openBench(b)
	ctx := context.Background()
	l := d.locker(b, d.plain)
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		key := dblock.Resource(fmt.Sprintf("bench:parallel:%d", next.Add(1)))
		for pb.Next() {
			if err := l.Do(ctx, key, noop); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// countingConnector wraps the MySQL driver and counts round trips: each
// statement, prepare, BEGIN, COMMIT, ROLLBACK and ping. Closing a prepared
// statement sends a packet the server does not answer, and is not counted.
type countingConnector struct {
	driver.Connector
	n *atomic.Int64
}

func (c countingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &countingConn{conn, c.n}, nil
}

type countingConn struct {
	driver.Conn
	n *atomic.Int64
}

var (
	_ driver.ConnBeginTx        = (*countingConn)(nil)
	_ driver.ConnPrepareContext = (*countingConn)(nil)
	_ driver.QueryerContext     = (*countingConn)(nil)
	_ driver.ExecerContext      = (*countingConn)(nil)
	_ driver.Pinger             = (*countingConn)(nil)
	_ driver.SessionResetter    = (*countingConn)(nil)
	_ driver.Validator          = (*countingConn)(nil)
	_ driver.NamedValueChecker  = (*countingConn)(nil)
)

func (c *countingConn) Prepare(q string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), q)
}

func (c *countingConn) PrepareContext(ctx context.Context, q string) (driver.Stmt, error) {
	c.n.Add(1)
	st, err := c.Conn.(driver.ConnPrepareContext).PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	return &countingStmt{st, c.n}, nil
}

func (c *countingConn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *countingConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	c.n.Add(1)
	tx, err := c.Conn.(driver.ConnBeginTx).BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	return countingTx{tx, c.n}, nil
}

func (c *countingConn) QueryContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Rows, error) {
	rows, err := c.Conn.(driver.QueryerContext).QueryContext(ctx, q, args)
	if !errors.Is(err, driver.ErrSkip) {
		c.n.Add(1)
	}
	return rows, err
}

func (c *countingConn) ExecContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Result, error) {
	res, err := c.Conn.(driver.ExecerContext).ExecContext(ctx, q, args)
	if !errors.Is(err, driver.ErrSkip) {
		c.n.Add(1)
	}
	return res, err
}

func (c *countingConn) Ping(ctx context.Context) error {
	c.n.Add(1)
	return c.Conn.(driver.Pinger).Ping(ctx)
}

func (c *countingConn) ResetSession(ctx context.Context) error {
	return c.Conn.(driver.SessionResetter).ResetSession(ctx)
}

func (c *countingConn) IsValid() bool { return c.Conn.(driver.Validator).IsValid() }

func (c *countingConn) CheckNamedValue(nv *driver.NamedValue) error {
	return c.Conn.(driver.NamedValueChecker).CheckNamedValue(nv)
}

type countingTx struct {
	driver.Tx
	n *atomic.Int64
}

func (t countingTx) Commit() error   { t.n.Add(1); return t.Tx.Commit() }
func (t countingTx) Rollback() error { t.n.Add(1); return t.Tx.Rollback() }

type countingStmt struct {
	driver.Stmt
	n *atomic.Int64
}

func (s *countingStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	s.n.Add(1)
	return s.Stmt.(driver.StmtExecContext).ExecContext(ctx, args)
}

func (s *countingStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	s.n.Add(1)
	return s.Stmt.(driver.StmtQueryContext).QueryContext(ctx, args)
}

func (s *countingStmt) CheckNamedValue(nv *driver.NamedValue) error {
	return s.Stmt.(driver.NamedValueChecker).CheckNamedValue(nv)
}

// BenchmarkTryLockHeld is a refusal: TryLock, and LockTx with NoWait in a
// caller's transaction, of a key another Locker holds, beside the raw
// statement (a zero lock-wait timeout on MariaDB) in gorm's transaction.
func BenchmarkTryLockHeld(b *testing.B) {
	d := openBench(b)
	key := dblock.Resource("bench:trylock-held")
	ctx := context.Background()
	holder := d.locker(b, d.plain)
	held, err := holder.Lock(ctx, key)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = held.Rollback() })
	var id int64
	if err := d.plain.Raw("SELECT id FROM `"+d.table+"` WHERE resource = ?", key.Resource).Scan(&id).Error; err != nil || id == 0 {
		b.Fatalf("row id of %s: %d, %v", key, id, err)
	}
	rawSQL := fmt.Sprintf("SET STATEMENT innodb_lock_wait_timeout=0 FOR SELECT id FROM `%s` WHERE id = %d FOR UPDATE", d.table, id)
	refused := func(err error) error {
		if errors.Is(err, dblock.ErrNotAcquired) {
			return nil
		}
		return fmt.Errorf("want ErrNotAcquired, got %w", err)
	}
	for _, c := range []struct {
		name string
		op   func(gdb *gorm.DB, l *dblock.Locker) error
	}{
		{"raw-begin-lock-nowait-rollback", func(gdb *gorm.DB, _ *dblock.Locker) error {
			tx := gdb.WithContext(ctx).Begin()
			if tx.Error != nil {
				return tx.Error
			}
			defer tx.Rollback()
			var got int64
			err := tx.Statement.ConnPool.QueryRowContext(ctx, rawSQL).Scan(&got)
			if n := (*gomysql.MySQLError)(nil); errors.As(err, &n) && n.Number == 1205 {
				return nil
			}
			return fmt.Errorf("want 1205, got %v", err)
		}},
		{"TryLock", func(_ *gorm.DB, l *dblock.Locker) error {
			k, err := l.TryLock(ctx, key)
			if err == nil {
				_ = k.Rollback()
			}
			return refused(err)
		}},
		{"LockTx-NoWait", func(gdb *gorm.DB, l *dblock.Locker) error {
			tx := gdb.WithContext(ctx).Begin()
			if tx.Error != nil {
				return tx.Error
			}
			defer tx.Rollback()
			return refused(l.LockTx(ctx, tx, key, dblock.NoWait()))
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			bench(b, d.plain, d.locker(b, d.plain), c.op)
			d.roundTrips(b, c.op)
		})
	}
}
