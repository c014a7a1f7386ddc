package dblock

import (
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/txlock/txlock/internal/serverinfo"
	"github.com/txlock/txlock/schema"
)

// An Option configures a Locker. Options are validated by New.
type Option func(*config) error

// A LockOption configures one acquisition. Passed to New through Defaults,
// it applies to every acquisition of that Locker.
type LockOption func(*lockConfig) error

// keyCacheSize is how many key-to-row-id entries a Locker keeps (least
// recently used evicted first); a key whose id is not cached costs one
// more round trip to acquire.
const keyCacheSize = 10_000

type config struct {
	table     string
	cacheSize int
	logger    *slog.Logger
	sideDB    *sql.DB
	defaults  []LockOption
	meters    metric.MeterProvider // nil: otel.GetMeterProvider()
	tracers   trace.TracerProvider // nil: otel.GetTracerProvider()

	allowReadOnly bool
	galera        serverinfo.GaleraMode

	label string // Label; "": defaultLabel()
}

// AllowReadOnly lets New accept a read-only server (read_only ON, most
// likely a replica), which it otherwise refuses with ErrReadOnly: for tools
// that only inspect, or a standby before its promotion. Never lock on a
// replica beside holders on the primary.
func AllowReadOnly() Option {
	return func(c *config) error {
		c.allowReadOnly = true
		return nil
	}
}

// GaleraSingleWriter tells New that all lock traffic goes to one Galera node
// at a time (a proxy in single-writer mode): locks are plain row locks, as
// on a single server. See docs/HA.md. No effect off Galera.
func GaleraSingleWriter() Option {
	return func(c *config) error {
		if c.galera == serverinfo.GaleraMultiWriter {
			return errors.New("dblock: GaleraSingleWriter and GaleraMultiWriter exclude each other")
		}
		c.galera = serverinfo.GaleraSingleWriter
		return nil
	}
}

// GaleraMultiWriter tells New that lock traffic may reach several Galera
// nodes at once. See "Galera" in the package documentation and docs/HA.md
// for what this mode guarantees and costs. No effect off Galera.
func GaleraMultiWriter() Option {
	return func(c *config) error {
		if c.galera == serverinfo.GaleraSingleWriter {
			return errors.New("dblock: GaleraSingleWriter and GaleraMultiWriter exclude each other")
		}
		c.galera = serverinfo.GaleraMultiWriter
		return nil
	}
}

// Table sets the lock table's name (default "tb_lock"): letters, digits and
// underscores, starting with a letter or underscore, at most
// schema.MaxTableNameLen characters. Create it with
// migrations.Up(ctx, db, migrations.Table(name)).
func Table(name string) Option {
	return func(c *config) error {
		if err := schema.ValidTableName(name); err != nil {
			return fmt.Errorf("dblock: Table: %w", err)
		}
		c.table = name
		return nil
	}
}

// Logger sets a structured logger for events worth an operator's attention
// (lost locks, dropped Locks, cleanup failures). The default logs nothing.
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

// SideDB sets the pool the Locker uses beside lock transactions (row
// creation, fencing tokens, interrupting abandoned waits): another pool
// than db's, on the same database, in autocommit. Needed by NewSQL, and
// when db was opened on an existing pool (no DSN); otherwise the Locker
// opens one from db's DSN. Not closed by Close.
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
		if lc.anyShared() {
			return errSharedDefaults
		}
		if lc.permits > 0 {
			return errPermitsDefaults
		}
		c.defaults = append(c.defaults, opts...)
		return nil
	}
}

// MeterProvider sets the OpenTelemetry MeterProvider of the Locker's
// metrics (see "Observability" in the README); by default the global one.
func MeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) error {
		if mp == nil {
			return errors.New("dblock: MeterProvider: nil metric.MeterProvider")
		}
		c.meters = mp
		return nil
	}
}

// TracerProvider sets the OpenTelemetry TracerProvider of the Locker's
// spans ("txlock.Do", "txlock.acquire"); by default the global one.
func TracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) error {
		if tp == nil {
			return errors.New("dblock: TracerProvider: nil trace.TracerProvider")
		}
		c.tracers = tp
		return nil
	}
}

type lockConfig struct {
	wait     time.Duration // > 0: bounded wait
	noWait   bool
	attempts int // > 1: Do runs fn again after the server rolled its transaction back
	fencing  bool
	// sharedAll: every key of the call is taken shared; sharedKeys: these
	// keys are (Shared).
	sharedAll  bool
	sharedKeys []Key
	permits    int           // > 0: a permit of the key's semaphore (Permits)
	lease      time.Duration // server and client bound on a silent holder
	fresh      bool          // the caller's transaction has not read before this lock

	minInterval time.Duration // > 0: the key's runs are at least this far apart (mininterval.go)
	maxHold     time.Duration // > 0: the lock is taken away this long after its grant (maxhold.go)
	maxHoldCall bool          // MaxHold was passed to the call itself, not only through Defaults
}

func (lc *lockConfig) apply(opts []LockOption) error {
	if lc.lease == 0 {
		lc.lease = defaultLease
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

// WaitTimeout bounds the whole acquisition (pool connection, row step and
// the server's wait, sub-second values honoured); running out gives
// ErrNotAcquired. See "Waiting" in the package documentation.
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

// NoWait makes an acquisition fail at once with ErrNotAcquired when the key
// is held.
func NoWait() LockOption {
	return func(lc *lockConfig) error {
		lc.noWait = true
		lc.wait = 0
		return nil
	}
}

// NoPriorReads promises that the transaction a lock joins has not read
// anything before it, which skips the stale-snapshot check (an autocommit
// write and a read). A wrong promise brings back the silent lost update
// the check prevents.
func NoPriorReads() LockOption {
	return func(lc *lockConfig) error {
		lc.fresh = true
		return nil
	}
}

// Fencing takes a fencing token with the lock (Lock.Token, TokenFrom):
// strictly increasing per key in grant order, never reused. It costs an
// autocommit write and a read; see "Fencing tokens" in the package
// documentation.
func Fencing() LockOption {
	return func(lc *lockConfig) error {
		lc.fencing = true
		return nil
	}
}

// defaultLease is the lease of a lock whose acquisition does not set one.
const defaultLease = 60 * time.Second

// minLease is the shortest lease: the server's idle timeouts count whole
// seconds.
const minLease = time.Second

// Lease bounds how long a lock outlives a holder that stopped talking to
// the server; the holder learns first (Lost, fn's context). Keep each
// statement shorter than the lease minus twice a fifth of it. At least 1 s,
// rounded up to whole seconds; 60 s by default. See "The lease" in the
// package documentation.
func Lease(d time.Duration) LockOption {
	return func(lc *lockConfig) error {
		if d < minLease {
			return fmt.Errorf("dblock: Lease must be at least %v, got %v", minLease, d)
		}
		lc.lease = d
		return nil
	}
}

// Retry makes Do run fn again, in a new transaction, when the server
// rolled its transaction back (ErrDeadlock, ErrStaleSnapshot): at most
// attempts runs in all, with jittered backoff from 5 ms to 200 ms. fn must
// be safe to run again. A Do that joins a transaction cannot retry.
func Retry(attempts int) LockOption {
	return func(lc *lockConfig) error {
		if attempts < 1 {
			return fmt.Errorf("dblock: Retry: attempts must be at least 1, got %d", attempts)
		}
		lc.attempts = attempts
		return nil
	}
}
