package dblock

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/driver/mysql"
	"gorm.io/gorm"

	"github.com/txlock/txlock/internal/serverinfo"
	"github.com/txlock/txlock/schema"
)

// A Locker takes locks on one lock table of one database. It is safe for
// concurrent use; create one per database and share it. Its key cache and
// statements are its own: Lockers do not share state.
type Locker struct {
	db      *gorm.DB // the caller's handle: lock transactions are begun on it
	sqlDB   *sql.DB  // the caller's pool
	side    *sql.DB  // autocommit work beside a lock transaction
	ownSide bool     // side was opened by New and is closed by Close
	cfg     config
	srv     server
	cache   *lru[Key, int64]
	// permitCache maps a semaphore's key to its permit rows (permits.go).
	permitCache *lru[Key, *semaphore]
	leased      *lru[any, int] // driver connection -> lease seconds this Locker set on it
	q           queries
	// dsnIdent names the server and schema of db's DSN ("" without one).
	dsnIdent string
	// readTimeout is the DSN's readTimeout (0 when none or unknown): a
	// wait longer than it would make the driver close the connection.
	readTimeout time.Duration
	log         *slog.Logger
	tel         *telemetry
	marker      string      // "txlock:<random>-" prefix that tags this Locker's waiting statements
	touch       bool        // Galera multi-writer: write the lock row after the locking read
	hier        atomic.Bool // the lock table's hierarchy setting, as last read (hierarchy.go)
	hierRead    atomic.Bool // the setting was read from the table at least once
	seq         atomic.Uint64
	closed      atomic.Bool
	// callerTxs maps a caller's transaction (weakly) to what it holds
	// through this Locker, whatever context or handle reaches it.
	callerTxs sync.Map
	// sessions writes the Label of the connections the Locker locks on.
	sessions *sessionBook
}

// leasedConnsTracked bounds how many pool connections a Locker remembers
// having set its lease on; one it forgot gets it set again (one round
// trip).
const leasedConnsTracked = 1024

// sidePoolSize bounds the Locker's own pool, used beside lock transactions
// for row creation, fencing tokens and withdrawing abandoned waits.
const sidePoolSize = 4

// detectTimeout bounds the server detection New performs.
const detectTimeout = 10 * time.Second

// New returns a Locker on db, a gorm handle opened with gorm.io/driver/mysql
// on MySQL 8.0+ or MariaDB 10.6+. New asks the server what it is (a few
// round trips, bounded by 10 s) and fails on a closed or
// unreachable database, a server too old for txlock, a read-only server
// (ErrReadOnly, unless AllowReadOnly), or a Galera node when neither
// GaleraSingleWriter nor GaleraMultiWriter is given. It does not check the
// lock table: a missing table is reported by the first acquisition as
// ErrTableMissing.
//
// The Locker opens a small side pool of its own from db's DSN, for work
// that must run beside a lock transaction; a db opened on an existing
// connection pool (mysql.Config{Conn: ...}) has no DSN, and New then needs
// SideDB. Call Close when done with the Locker, to release its side pool.
func New(db *gorm.DB, opts ...Option) (*Locker, error) {
	if db == nil {
		return nil, errors.New("dblock: New: nil *gorm.DB")
	}
	return newLocker("New", db, opts)
}

// newLocker is New and NewSQL (name is the caller's, for messages) on db,
// a gorm handle.
func newLocker(name string, db *gorm.DB, opts []Option) (*Locker, error) {
	cfg := config{table: schema.DefaultTable, cacheSize: keyCacheSize}
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	sqlDB, err := db.DB()
	if err != nil {
		return nil, fmt.Errorf("dblock: %s: the *gorm.DB has no *sql.DB underneath: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), detectTimeout)
	defer cancel()
	srv, err := detectServer(ctx, sqlDB)
	if err != nil {
		return nil, err
	}
	if err := checkTopology(srv, cfg); err != nil {
		return nil, err
	}
	var nonce [6]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, fmt.Errorf("dblock: %s: %w", name, err)
	}
	l := &Locker{
		db:          db,
		sqlDB:       sqlDB,
		cfg:         cfg,
		srv:         srv,
		cache:       newLRU[Key, int64](cfg.cacheSize),
		permitCache: newLRU[Key, *semaphore](permitCacheSize),
		leased:      newLRU[any, int](leasedConnsTracked),
		q:           buildQueries(cfg.table, srv),
		touch:       srv.galera && cfg.galera == serverinfo.GaleraMultiWriter,
		log:         cfg.logger,
		marker:      "txlock:" + hex.EncodeToString(nonce[:]) + "-",
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	if cfg.label == "" {
		cfg.label = defaultLabel()
		l.cfg.label = cfg.label
	}
	l.log = l.log.With("label", cfg.label)
	l.sessions = newSessionBook(cfg.table, cfg.label, srv)
	if l.tel, err = newTelemetry(&cfg); err != nil {
		return nil, err
	}
	dsn := dsnConfig(db)
	if dsn != nil {
		l.readTimeout = dsn.ReadTimeout
		l.dsnIdent = dsnIdent(db)
	}
	switch {
	case cfg.sideDB == sqlDB:
		return nil, fmt.Errorf("dblock: %s: SideDB is the pool the Locker locks on: the side pool must be another one (its work runs beside lock transactions, and must never wait for a connection they hold)", name)
	case cfg.sideDB != nil:
		if err := checkSideDB(ctx, name, cfg.sideDB, srv.schema); err != nil {
			return nil, err
		}
		l.side = cfg.sideDB
	case dsn != nil:
		if l.side, err = openSidePool(dsn); err != nil {
			return nil, err
		}
		l.ownSide = true
	default:
		what := "the *gorm.DB was opened on an existing connection pool (mysql.Config{Conn: ...})"
		if name == "NewSQL" {
			what = "a *sql.DB does not tell its DSN"
		}
		return nil, fmt.Errorf("dblock: %s: %s, "+
			"so the Locker cannot open the small side pool it needs beside lock transactions (row creation, fencing tokens, "+
			"interrupting abandoned waits) without waiting on the connections your goroutines hold: "+
			"pass SideDB(db2), a second *sql.DB on the same database (e.g. sql.OpenDB of the same connector, 4 connections are enough)", name, what)
	}
	return l, nil
}

// dsnConfig returns the DSN configuration of db's gorm MySQL dialector, or
// nil when it has none (a gorm.DB opened on an existing pool).
func dsnConfig(db *gorm.DB) *gomysql.Config {
	d, ok := db.Dialector.(*mysql.Dialector)
	if !ok || d.Config == nil || d.Conn != nil {
		return nil
	}
	if d.DSNConfig != nil {
		return d.DSNConfig
	}
	if d.DSN == "" {
		return nil
	}
	cfg, err := gomysql.ParseDSN(d.DSN)
	if err != nil {
		return nil
	}
	return cfg
}

// openSidePool opens a small pool of the Locker's own from dsn. Its
// statements must commit on their own: autocommit is forced on, whatever
// the DSN says.
func openSidePool(dsn *gomysql.Config) (*sql.DB, error) {
	cfg := dsn.Clone()
	if cfg.Params == nil {
		cfg.Params = map[string]string{}
	}
	cfg.Params["autocommit"] = "1"
	connector, err := gomysql.NewConnector(cfg)
	if err != nil {
		return nil, fmt.Errorf("dblock: New: opening the side pool: %w", err)
	}
	side := sql.OpenDB(connector)
	side.SetMaxOpenConns(sidePoolSize)
	side.SetMaxIdleConns(1)
	side.SetConnMaxIdleTime(time.Minute)
	return side, nil
}

// checkSideDB refuses a side pool whose statements would not commit on
// their own, or that reaches another schema than the Locker's pool (its
// rows would be created in another lock table than the one locked).
func checkSideDB(ctx context.Context, name string, side *sql.DB, schemaName string) error {
	var on int
	var sideSchema sql.NullString
	if err := side.QueryRowContext(ctx, "SELECT @@autocommit, DATABASE()").Scan(&on, &sideSchema); err != nil {
		return fmt.Errorf("dblock: %s: checking the SideDB pool: %w", name, err)
	}
	if on != 1 {
		return fmt.Errorf("dblock: %s: the SideDB pool runs with autocommit off: its row creations and fencing tokens would never commit; open it with autocommit on", name)
	}
	if sideSchema.String != schemaName {
		return fmt.Errorf("dblock: %s: the SideDB pool uses database %q, the Locker's pool %q: key rows would be created in another lock table than the one locked; open it on the same database", name, sideSchema.String, schemaName)
	}
	return nil
}

// Close releases the Locker's side pool. It does not close the caller's
// *gorm.DB or *sql.DB, and it does not release locks held through the Locker: those
// end with their transactions. Acquisitions after Close fail.
func (l *Locker) Close() error {
	if l == nil || !l.closed.CompareAndSwap(false, true) {
		return nil
	}
	l.stopLabels()
	if l.ownSide {
		return l.side.Close()
	}
	return nil
}

// checkTopology refuses servers where locks would not exclude the holders
// they must exclude, unless cfg says the caller knows.
func checkTopology(t server, cfg config) error {
	if t.readOnly && !cfg.allowReadOnly {
		return fmt.Errorf("%w (read_only is ON; pass AllowReadOnly to accept it)", ErrReadOnly)
	}
	if t.galera && cfg.galera == serverinfo.GaleraUnset {
		return errors.New("dblock: the server is a Galera cluster node (wsrep_on=ON), where row locks are local to a node: " +
			"pass GaleraSingleWriter() if all lock traffic goes to one node at a time (plain blocking locks), " +
			"or GaleraMultiWriter() if holders may reach different nodes (each holder also writes its lock row, so that " +
			"certification lets only one of two overlapping holders commit; the other gets ErrLockLost)")
	}
	return nil
}

// errClosed is returned by acquisitions on a closed Locker.
var errClosed = errors.New("dblock: Locker is closed")

// check validates the common arguments of an acquisition.
func (l *Locker) check(ctx context.Context, key Key) error {
	if l == nil {
		return errors.New("dblock: nil *Locker")
	}
	if ctx == nil {
		return errors.New("dblock: nil context")
	}
	if l.closed.Load() {
		return errClosed
	}
	if err := key.Validate(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("dblock: acquiring %s: %w", key, context.Cause(ctx))
	}
	return nil
}
