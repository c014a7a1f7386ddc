package dblock

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/driver/mysql"
	"gorm.io/gorm"

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
	leased  *lru[any, int] // driver connection -> lease seconds its session was set to
	q       queries
	log     *slog.Logger
	tel     *telemetry
	marker  string // "txlock:<random>-" prefix that tags this Locker's waiting statements
	touch   bool   // Galera multi-writer: write the lock row after the locking read
	seq     atomic.Uint64
	closed  atomic.Bool
}

// sidePoolSize bounds the Locker's own pool, used beside lock transactions
// for row creation, fencing tokens and withdrawing abandoned waits.
const sidePoolSize = 4

// detectTimeout bounds the server detection New performs.
const detectTimeout = 10 * time.Second

// New returns a Locker on db, a gorm handle opened with gorm.io/driver/mysql
// on MySQL 8.0+ or MariaDB 10.6+. New asks the server for its version and
// topology (two round trips, bounded by 10 s: SHOW GLOBAL VARIABLES of the
// version, read_only, wsrep_on and the semi-sync state, and SHOW GRANTS;
// see Topology) and fails on a closed or unreachable database, a server
// too old for txlock, a read-only server (ErrReadOnly, unless
// AllowReadOnly), or a Galera node when neither GaleraSingleWriter nor
// GaleraMultiWriter is given. It does not check the lock table: a missing
// table is reported by the first acquisition as ErrTableMissing.
//
// Call Close when done with the Locker, to release its side pool.
func New(db *gorm.DB, opts ...Option) (*Locker, error) {
	if db == nil {
		return nil, errors.New("dblock: New: nil *gorm.DB")
	}
	cfg := config{table: schema.DefaultTable, cacheSize: DefaultKeyCacheSize}
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
		return nil, fmt.Errorf("dblock: New: the *gorm.DB has no *sql.DB underneath: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), detectTimeout)
	defer cancel()
	srv, err := detectServer(ctx, sqlDB)
	if err != nil {
		return nil, err
	}
	if err := checkTopology(srv.topology, cfg); err != nil {
		return nil, err
	}
	var nonce [6]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, fmt.Errorf("dblock: New: %w", err)
	}
	l := &Locker{
		db:     db,
		sqlDB:  sqlDB,
		cfg:    cfg,
		srv:    srv,
		cache:  newLRU[Key, int64](cfg.cacheSize),
		leased: newLRU[any, int](leasedConnsTracked),
		q:      buildQueries(cfg.table, srv.mariaDB),
		touch:  srv.topology.Galera && cfg.galera == galeraMultiWriter,
		log:    cfg.logger,
		marker: "txlock:" + hex.EncodeToString(nonce[:]) + "-",
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	if l.tel, err = newTelemetry(&cfg); err != nil {
		return nil, err
	}
	switch {
	case cfg.sideDB != nil:
		l.side = cfg.sideDB
	default:
		l.side, l.ownSide = openSidePool(db), true
		if l.side == nil {
			l.side, l.ownSide = sqlDB, false
		}
	}
	return l, nil
}

// openSidePool opens a small pool of the Locker's own from the DSN of the
// gorm MySQL dialector, or returns nil when there is none.
func openSidePool(db *gorm.DB) *sql.DB {
	d, ok := db.Dialector.(*mysql.Dialector)
	if !ok || d.Config == nil || d.Conn != nil {
		return nil
	}
	cfg := d.DSNConfig
	if cfg == nil {
		if d.DSN == "" {
			return nil
		}
		parsed, err := gomysql.ParseDSN(d.DSN)
		if err != nil {
			return nil
		}
		cfg = parsed
	}
	connector, err := gomysql.NewConnector(cfg)
	if err != nil {
		return nil
	}
	side := sql.OpenDB(connector)
	side.SetMaxOpenConns(sidePoolSize)
	side.SetMaxIdleConns(1)
	side.SetConnMaxIdleTime(time.Minute)
	return side
}

// Close releases the Locker's side pool. It does not close the caller's
// *gorm.DB, and it does not release locks held through the Locker: those
// end with their transactions. Acquisitions after Close fail.
func (l *Locker) Close() error {
	if l == nil || !l.closed.CompareAndSwap(false, true) {
		return nil
	}
	if l.ownSide {
		return l.side.Close()
	}
	return nil
}

// Table returns the name of the lock table.
func (l *Locker) Table() string { return l.cfg.table }

// ServerVersion returns the version string of the server New detected.
func (l *Locker) ServerVersion() string { return l.srv.version }

// Topology returns what New learned about the server's place in a
// replication setup. It is not refreshed: a later failover or a change of
// read_only shows in the errors of acquisitions and commits (ErrLockLost),
// not here.
func (l *Locker) Topology() Topology { return l.srv.topology }

// checkTopology refuses servers where locks would not exclude the holders
// they must exclude, unless cfg says the caller knows.
func checkTopology(t Topology, cfg config) error {
	if t.ReadOnly && !cfg.allowReadOnly {
		return fmt.Errorf("%w (read_only is ON; pass AllowReadOnly to accept it)", ErrReadOnly)
	}
	if t.Galera && cfg.galera == galeraUnset {
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
		return fmt.Errorf("dblock: acquiring %s: %w", key, err)
	}
	return nil
}

// rowAttempts bounds the row step's retries: a concurrent creator, a gc
// deleting the row between two statements, or two creators of one key
// deadlocking on a deleted row's index entry.
const rowAttempts = 6

// rowID returns the id of key's row, creating the row when it is missing
// (protocol step 1): a plain read, then INSERT IGNORE, both in autocommit on
// the side pool, never inside a lock transaction.
func (l *Locker) rowID(ctx context.Context, key Key) (int64, error) {
	return l.findRow(ctx, key, false)
}

// findRow is rowID; inTx says the caller's open transaction has just found
// the row missing with a locking read, whose gap lock may block the
// insert: a lock wait then fails at once instead of being retried.
func (l *Locker) findRow(ctx context.Context, key Key, inTx bool) (int64, error) {
	if id, ok := l.cache.get(key); ok {
		return id, nil
	}
	h := key.Hash()
	var err error
	for attempt := 0; attempt < rowAttempts; attempt++ {
		var id int64
		if id, err = l.lookupRow(ctx, h[:]); err == nil {
			l.cache.put(key, id)
			return id, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			break
		}
		if id, err = l.createRow(ctx, key, h[:]); err == nil {
			if id != 0 {
				l.cache.put(key, id)
				return id, nil
			}
			continue // a concurrent creator won: read its row
		}
		// Autocommit statements: safe to run again. Two creators of one
		// key can deadlock on a deleted row's index entry: back off apart.
		switch n := mysqlErrorNumber(err); n {
		case erLockWaitTimeout, erStatementTimeout:
			if inTx {
				return 0, fmt.Errorf("%w: %s: its row was deleted (outside `txlock gc`, which keeps the newest row) and creating it again waits for this transaction's own gap lock: roll the transaction back and retry: %w",
					ErrNotAcquired, key, err)
			}
			fallthrough
		case erLockDeadlock:
			if err := sleepCtx(ctx, DefaultRetryPolicy.backoff(attempt+1)); err != nil {
				return 0, fmt.Errorf("dblock: finding the row of %s: %w", key, err)
			}
			continue
		}
		break
	}
	if mysqlErrorNumber(err) == erNoSuchTable {
		return 0, fmt.Errorf("%w: %w", ErrTableMissing, err)
	}
	if e := l.notPrimary("finding the row of", key, err); e != nil {
		return 0, e
	}
	return 0, fmt.Errorf("dblock: finding the row of %s in %s: %w", key, l.cfg.table, withCause(ctx, err))
}

// createRow inserts key's row and returns its id, or 0 when the row exists
// already. On MariaDB the insert waits at most a second: INSERT IGNORE of a
// row that a holder has locked waits for the holder, and the side pool is
// small.
func (l *Locker) createRow(ctx context.Context, key Key, hash []byte) (int64, error) {
	global := 0
	if key.Global {
		global = 1
	}
	res, err := l.side.ExecContext(ctx, l.q.insertRow, hash, key.Resource, key.Operation, key.Method, key.User, global)
	if err != nil {
		return 0, err
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return 0, nil
	}
	id, err := res.LastInsertId()
	if err == nil {
		l.log.DebugContext(ctx, "dblock: created key row", "granularity", key.Granularity(), "id", id)
	}
	return id, err
}

func (l *Locker) lookupRow(ctx context.Context, hash []byte) (int64, error) {
	var id int64
	err := l.side.QueryRowContext(ctx, l.q.selectRow, hash).Scan(&id)
	return id, err
}
