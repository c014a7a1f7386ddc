package dblock

import (
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/txlock/txlock/schema"
)

// An Option configures a Locker. Options are validated by New.
type Option func(*config) error

// A LockOption configures one acquisition. Passed to New through Defaults,
// it applies to every acquisition of that Locker.
type LockOption func(*lockConfig) error

// DefaultKeyCacheSize is how many key-to-row-id entries a Locker keeps by
// default (least recently used are evicted first).
const DefaultKeyCacheSize = 10_000

type config struct {
	table     string
	cacheSize int
	logger    *slog.Logger
	sideDB    *sql.DB
	defaults  []LockOption
	meters    metric.MeterProvider // nil: otel.GetMeterProvider()
	tracers   trace.TracerProvider // nil: otel.GetTracerProvider()

	allowReadOnly bool
	galera        galeraMode
}

// galeraMode is how a Locker on a Galera node makes its locks hold across
// the cluster.
type galeraMode uint8

const (
	galeraUnset        galeraMode = iota
	galeraSingleWriter            // all lock traffic goes to one node
	galeraMultiWriter             // holders write their lock row: certification decides
)

// AllowReadOnly lets New accept a read-only server (read_only ON, most
// likely a replica), which it otherwise refuses with ErrReadOnly. Locks
// taken there exclude only other holders on that same server, and keys
// whose row does not exist yet cannot be created (error 1290). Use it for
// tools that only inspect (listing locks, diagnostics), for a service that
// starts against a standby before it is promoted, or for a primary that is
// read-only for a moment during a planned switchover; never to lock on a
// replica beside holders on the primary.
func AllowReadOnly() Option {
	return func(c *config) error {
		c.allowReadOnly = true
		return nil
	}
}

// GaleraSingleWriter tells New that all lock traffic of this service goes
// to one Galera node at a time (a proxy in single-writer mode, or one node
// by configuration): locks are plain blocking row locks, as on a single
// server. Row locks are local to a node: two holders that reach different
// nodes both get the key. On a server that is not a Galera node the option
// has no effect.
func GaleraSingleWriter() Option {
	return func(c *config) error {
		if c.galera == galeraMultiWriter {
			return errors.New("dblock: GaleraSingleWriter and GaleraMultiWriter exclude each other")
		}
		c.galera = galeraSingleWriter
		return nil
	}
}

// GaleraMultiWriter makes locks hold across Galera nodes that all take
// lock traffic: every holder also writes its lock row (its updated_at) in
// the holding transaction, right after the locking read, one more
// statement per acquisition. Of two overlapping holders on different
// nodes, certification then lets the first to commit win; the other's
// transaction is aborted, and it gets ErrLockLost (with ErrDeadlock, error
// 1213) at its next statement or at COMMIT, with none of its writes
// committed. So a holder may act on the lock only through its transaction:
// side effects outside the database before COMMIT are not protected. On a
// server that is not a Galera node the option has no effect.
func GaleraMultiWriter() Option {
	return func(c *config) error {
		if c.galera == galeraSingleWriter {
			return errors.New("dblock: GaleraSingleWriter and GaleraMultiWriter exclude each other")
		}
		c.galera = galeraMultiWriter
		return nil
	}
}

// Table sets the lock table's name (default "tb_lock"). The name is
// validated so that it can never inject SQL: letters, digits and
// underscores, starting with a letter or underscore, at most
// schema.MaxTableNameLen (49) characters.
// Create the table with migrations.Up(ctx, db, migrations.WithTable(name)).
func Table(name string) Option {
	return func(c *config) error {
		if err := schema.ValidTableName(name); err != nil {
			return fmt.Errorf("dblock: Table: %w", err)
		}
		c.table = name
		return nil
	}
}

// KeyCacheSize sets how many key-to-row-id entries the Locker caches
// (default DefaultKeyCacheSize). Memory grows with distinct keys up to this
// bound, never with the number of acquisitions.
func KeyCacheSize(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("dblock: KeyCacheSize must be at least 1, got %d", n)
		}
		c.cacheSize = n
		return nil
	}
}

// Logger sets a structured logger for events worth an operator's attention
// (row creation, lost locks, cleanup failures). The default logs nothing.
// DSNs and credentials are never logged.
func Logger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("dblock: Logger: nil *slog.Logger")
		}
		c.logger = l
		return nil
	}
}

// SideDB sets the pool the Locker uses for work that must run beside a
// lock transaction in autocommit (creating a key's row). By default the
// Locker opens a small pool of its own (at most 4 connections) from the
// DSN of the gorm MySQL dialector, so that a caller holding its last pool
// connection never waits for a second one; when the DSN is not available
// (a gorm.DB built on an existing connection) the caller's pool is used.
// A pool passed here is not closed by Locker.Close.
func SideDB(db *sql.DB) Option {
	return func(c *config) error {
		if db == nil {
			return errors.New("dblock: SideDB: nil *sql.DB")
		}
		c.sideDB = db
		return nil
	}
}

// Defaults sets lock options applied to every acquisition of the Locker,
// before the options given to the call itself.
func Defaults(opts ...LockOption) Option {
	return func(c *config) error {
		var lc lockConfig
		if err := lc.apply(opts); err != nil {
			return err
		}
		c.defaults = append(c.defaults, opts...)
		return nil
	}
}

type lockConfig struct {
	wait    time.Duration // > 0: bounded wait
	noWait  bool
	retry   RetryPolicy // Attempts > 1: Do runs fn again after a rollback by the server
	fencing bool
	lease   time.Duration // server and client bound on a silent holder
	fresh   bool          // the caller's transaction has not read before this lock
}

func (lc *lockConfig) apply(opts []LockOption) error {
	if lc.lease == 0 {
		lc.lease = DefaultLease
	}
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(lc); err != nil {
			return err
		}
	}
	return nil
}

// maxWait is the longest wait the servers accept (innodb_lock_wait_timeout
// is at most 1073741824 seconds); longer waits are clamped.
const maxWait = 1 << 30 * time.Second

// WaitTimeout bounds how long an acquisition waits for a held key; when it
// runs out the acquisition fails with ErrNotAcquired. Sub-second values are
// honoured (MariaDB: a per-statement max_statement_time; MySQL: the
// statement's lock-wait timeout rounded up, cut short by a client
// deadline). Without it, a wait is bounded by the context's deadline, or
// else by the server's innodb_lock_wait_timeout (50 s by default).
func WaitTimeout(d time.Duration) LockOption {
	return func(lc *lockConfig) error {
		if d <= 0 {
			return fmt.Errorf("dblock: WaitTimeout must be positive, got %v (use NoWait to not wait)", d)
		}
		lc.wait = min(d, maxWait)
		lc.noWait = false
		return nil
	}
}

// NoPriorReads tells LockTx (or a Do that joins a transaction) that the
// transaction has not read anything before this acquisition, so its
// snapshot cannot predate the lock: the check for that (an autocommit
// write and a read, MariaDB only) is skipped. A wrong promise brings back
// the silent lost update the check prevents.
func NoPriorReads() LockOption {
	return func(lc *lockConfig) error {
		lc.fresh = true
		return nil
	}
}

// NoWait makes an acquisition fail at once with ErrNotAcquired when the key
// is held (SELECT ... FOR UPDATE NOWAIT).
func NoWait() LockOption {
	return func(lc *lockConfig) error {
		lc.noWait = true
		lc.wait = 0
		return nil
	}
}

// MeterProvider sets the OpenTelemetry MeterProvider the Locker records its
// metrics with (instrumentation scope "github.com/txlock/txlock/dblock"):
// acquisition durations by outcome, hold durations, lost locks and waiting
// acquisitions, by key granularity and lock table, never by key. By default
// the Locker uses otel.GetMeterProvider(), the global provider, which
// records nothing until the application sets one (and then records, even
// for Lockers created earlier).
func MeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) error {
		if mp == nil {
			return errors.New("dblock: MeterProvider: nil metric.MeterProvider")
		}
		c.meters = mp
		return nil
	}
}

// TracerProvider sets the OpenTelemetry TracerProvider the Locker makes its
// spans with: "txlock.Do" around Do and DoMulti, and "txlock.acquire"
// around each acquisition that goes to the server. By default the Locker
// uses otel.GetTracerProvider(), the global provider; while the
// application has set none, the Locker starts no span at all.
func TracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) error {
		if tp == nil {
			return errors.New("dblock: TracerProvider: nil trace.TracerProvider")
		}
		c.tracers = tp
		return nil
	}
}
