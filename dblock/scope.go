package dblock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"weak"

	"gorm.io/gorm"
)

// ctxKey is the context key of the transactions a context carries.
type ctxKey struct{}

// txScope is a transaction carried by a context: a handle on it, and what
// it holds. Several scopes of one caller's transaction (LockTx twice, or
// WithTx and LockTx) share one state through the Locker (adopt).
type txScope struct {
	tx    *gorm.DB // a handle on the transaction
	owner *hold    // the Locker's own transaction (Do, Lock), nil for a caller's
	pool  *sql.DB  // the pool the transaction runs on; nil when unknown
	st    atomic.Pointer[txState]
}

// txState is what a transaction holds: keys, fencing tokens, and for a
// caller's transaction, the database it runs on once asked.
type txState struct {
	mu     sync.Mutex
	first  heldKey           // the first key held (most transactions hold one)
	shared bool              // the first key is held shared
	nheld  int               // how many keys are held
	more   map[heldKey]bool  // the keys after the first: true if held shared
	tokens map[heldKey]int64 // fencing tokens taken in this transaction
	runs   map[heldKey]int64 // MinInterval runs this transaction recorded: their numbers
	permit map[heldKey]int64 // the permit row each semaphore's permit is held on
	// taken: rows locked by calls that were refused (InnoDB keeps them
	// until the transaction ends), not held for reentrancy: true if
	// shared. checks: how many shared stale-snapshot checks it ran.
	taken  map[heldKey]bool
	checks int
	ident  string // server and schema of a caller's transaction, once asked
}

func newScope(tx *gorm.DB, owner *hold, pool *sql.DB) *txScope {
	s := &txScope{tx: tx, owner: owner, pool: pool}
	s.st.Store(&txState{})
	return s
}

// heldKey is a key held in a table: the lock table's name for the key's
// lock, the permit table's for a permit of its semaphore.
type heldKey struct {
	table string
	key   Key
}

// scopeLink chains the transactions a context carries, innermost first: a
// Do on a Locker of another database, inside a Do, adds its own.
type scopeLink struct {
	s    *txScope
	next *scopeLink
}

func linkFrom(ctx context.Context) *scopeLink {
	if ctx == nil {
		return nil
	}
	link, _ := ctx.Value(ctxKey{}).(*scopeLink)
	return link
}

// withScope returns ctx carrying s in front of the transactions ctx carries.
func withScope(ctx context.Context, s *txScope) context.Context {
	return context.WithValue(ctx, ctxKey{}, &scopeLink{s: s, next: linkFrom(ctx)})
}

// endedErr returns why the transaction ended, or nil while it is open as
// far as the library knows: a caller's own transaction is checked by the
// acquisition itself.
func (s *txScope) endedErr() error {
	if s.owner == nil {
		return nil
	}
	return s.owner.endedErr()
}

// lossOr returns err, or for a transaction the Locker opened that was
// lost meanwhile (its lease or MaxHold ran out), the loss: what made err
// happen.
func (s *txScope) lossOr(err error) error {
	if s.owner != nil {
		if lerr := s.owner.endedErr(); lerr != nil && !errors.Is(err, lerr) {
			return fmt.Errorf("%w (then: %v)", lerr, err)
		}
	}
	return err
}

// holds reports whether the transaction holds hk, and whether only shared.
func (s *txScope) holds(hk heldKey) (held, shared bool) {
	st := s.st.Load()
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.nheld > 0 && st.first == hk {
		return true, st.shared
	}
	shared, held = st.more[hk]
	return held, shared
}

// holdsAny reports whether the transaction holds any key.
func (s *txScope) holdsAny() bool {
	st := s.st.Load()
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.nheld > 0
}

// addTaken records that a call that was refused locked hk (shared or not)
// before its refusal: the transaction keeps it until it ends, but holds
// it for no caller, so a later acquisition takes it again in full.
func (s *txScope) addTaken(hk heldKey, shared bool) {
	st := s.st.Load()
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.taken == nil {
		st.taken = make(map[heldKey]bool, 2)
	}
	if was, ok := st.taken[hk]; !ok || was {
		st.taken[hk] = shared
	}
}

// takenShared reports whether a refused call took hk, shared only.
func (s *txScope) takenShared(hk heldKey) bool {
	st := s.st.Load()
	st.mu.Lock()
	defer st.mu.Unlock()
	shared, ok := st.taken[hk]
	return ok && shared
}

// nextCheck returns the number of the next shared stale-snapshot check of
// the transaction (0, 1, ...).
func (s *txScope) nextCheck() int {
	st := s.st.Load()
	st.mu.Lock()
	defer st.mu.Unlock()
	st.checks++
	return st.checks - 1
}

// add records that the transaction holds hk, shared or exclusively. A key
// is never recorded twice: a held key is not taken again (join).
func (s *txScope) add(hk heldKey, shared bool) {
	st := s.st.Load()
	st.mu.Lock()
	defer st.mu.Unlock()
	if was, ok := st.taken[hk]; ok && !was {
		shared = false // a refused call took it exclusively: it is held so
	}
	delete(st.taken, hk)
	switch {
	case st.nheld == 0:
		st.first, st.shared = hk, shared
	case st.first == hk:
		return
	default:
		if st.more == nil {
			st.more = make(map[heldKey]bool, 2)
		}
		if _, ok := st.more[hk]; ok {
			return
		}
		st.more[hk] = shared
	}
	st.nheld++
}

// setToken records the fencing token the transaction took for k.
func (s *txScope) setToken(l *Locker, k Key, token int64) {
	st := s.st.Load()
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.tokens == nil {
		st.tokens = make(map[heldKey]int64, 1)
	}
	st.tokens[heldKey{l.cfg.table, k}] = token
}

// setPermit records that the transaction holds hk's permit on row id.
func (s *txScope) setPermit(hk heldKey, id int64) {
	st := s.st.Load()
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.permit == nil {
		st.permit = make(map[heldKey]int64, 1)
	}
	st.permit[hk] = id
}

// permitRow returns the permit row the transaction holds hk's permit on.
func (s *txScope) permitRow(hk heldKey) (int64, bool) {
	st := s.st.Load()
	st.mu.Lock()
	defer st.mu.Unlock()
	id, ok := st.permit[hk]
	return id, ok
}

// setRun records that the transaction recorded run n of k (MinInterval).
func (s *txScope) setRun(l *Locker, k Key, n int64) {
	st := s.st.Load()
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.runs == nil {
		st.runs = make(map[heldKey]int64, 1)
	}
	st.runs[heldKey{l.cfg.table, k}] = n
}

// run returns the number of the MinInterval run of k the transaction
// recorded, if it did.
func (s *txScope) run(l *Locker, k Key) (int64, bool) {
	st := s.st.Load()
	st.mu.Lock()
	defer st.mu.Unlock()
	n, ok := st.runs[heldKey{l.cfg.table, k}]
	return n, ok
}

// token returns the fencing token the transaction took for k in table.
func (s *txScope) token(table string, k Key) (int64, bool) {
	st := s.st.Load()
	st.mu.Lock()
	defer st.mu.Unlock()
	t, ok := st.tokens[heldKey{table, k}]
	return t, ok
}

// adopt makes s share the state of every other scope of the same caller's
// transaction that went through l, so that a key held through one is held
// through all (a second LockTx of a key needs no check and no new token).
// The Locker forgets a transaction once it has been collected.
func (l *Locker) adopt(s *txScope) {
	if s.owner != nil {
		return
	}
	sqlTx := sqlTxOf(s.tx)
	if sqlTx == nil {
		return
	}
	key := weak.Make(sqlTx)
	st, loaded := l.callerTxs.LoadOrStore(key, s.st.Load())
	if loaded {
		s.st.Store(st.(*txState))
		return
	}
	runtime.AddCleanup(sqlTx, func(k weak.Pointer[sql.Tx]) { l.callerTxs.Delete(k) }, key)
}

// sqlTxOf returns the *sql.Tx under a caller's gorm transaction, or nil
// when a ConnPool of unknown type hides it.
func sqlTxOf(tx *gorm.DB) *sql.Tx {
	pool, err := txPool(tx)
	if err != nil {
		return nil
	}
	sqlTx, _ := pool.(*sql.Tx)
	return sqlTx
}

// scopeFor returns the innermost transaction ctx carries that runs on l's
// database, or nil: l then opens a transaction of its own. A transaction
// on the same pool is l's database; one on another pool is if that pool
// reaches the same server and schema (asked once per transaction).
func (l *Locker) scopeFor(ctx context.Context) (*txScope, error) {
	for link := linkFrom(ctx); link != nil; link = link.next {
		s := link.s
		if s.pool == l.sqlDB {
			return s, nil
		}
		same, err := l.sameDatabase(ctx, s)
		if err != nil {
			return nil, err
		}
		if same {
			return s, nil
		}
	}
	return nil, nil
}

// sameDatabase reports whether the transaction of s runs on the server and
// schema of l's pool.
func (l *Locker) sameDatabase(ctx context.Context, s *txScope) (bool, error) {
	if s.owner != nil {
		return s.owner.l.srv.ident == l.srv.ident, nil
	}
	st := s.st.Load()
	st.mu.Lock()
	ident := st.ident
	st.mu.Unlock()
	if ident == "" {
		pool, err := txPool(s.tx)
		if err != nil {
			return false, err
		}
		var host, port, schemaName sql.NullString
		err = pool.QueryRowContext(ctx, "SELECT @@hostname, @@port, DATABASE()").Scan(&host, &port, &schemaName)
		if err != nil {
			return false, fmt.Errorf("%w: asking which database the transaction in the context runs on: %w", ErrNoTransaction, err)
		}
		ident = host.String + ":" + port.String + "/" + schemaName.String
		st.mu.Lock()
		st.ident = ident
		st.mu.Unlock()
	}
	return ident == l.srv.ident, nil
}

// dsnIdent names the server and schema of the transaction's DSN, or ""
// when unknown.
func (s *txScope) dsnIdent() string {
	if s.owner != nil {
		return s.owner.l.dsnIdent
	}
	return dsnIdent(s.tx)
}

// dsnIdent names the server and schema db's DSN reaches, or "" when db was
// opened on an existing pool.
func dsnIdent(db *gorm.DB) string {
	cfg := dsnConfig(db)
	if cfg == nil {
		return ""
	}
	return cfg.Net + "(" + cfg.Addr + ")/" + cfg.DBName
}

// WithTx returns a copy of ctx that carries tx, a transaction the caller
// opened with gorm. A Do under the returned context, on a Locker of tx's
// database, joins tx instead of opening a transaction: its lock is held
// until tx ends, and its fn writes through tx. Repositories reach tx with
// DB. A nil tx returns ctx unchanged.
func WithTx(ctx context.Context, tx *gorm.DB) context.Context {
	if tx == nil {
		return ctx
	}
	if c := lockConnOf(tx); c != nil {
		return withScope(ctx, c.lock.scope) // a Lock's own transaction
	}
	return withScope(ctx, callerScope(tx))
}

// callerScope returns a new scope for tx, a transaction of the caller.
func callerScope(tx *gorm.DB) *txScope {
	pool, _ := tx.DB()
	return newScope(tx, nil, pool)
}

// TxFrom returns the innermost transaction ctx carries (from WithTx, Do or
// Lock.Context), if any.
func TxFrom(ctx context.Context) (*gorm.DB, bool) {
	if link := linkFrom(ctx); link != nil {
		return link.s.tx, true
	}
	return nil, false
}

// DB returns the transaction ctx carries that runs on fallback's pool (or,
// failing that, on the server and schema fallback's DSN names), bound to
// ctx; when none does, the innermost transaction ctx carries; when it
// carries none, fallback.WithContext(ctx). Repositories call it so that
// their statements run inside the caller's lock transaction. It returns nil
// when there is no transaction and fallback is nil.
func DB(ctx context.Context, fallback *gorm.DB) *gorm.DB {
	link := linkFrom(ctx)
	if link == nil {
		if fallback == nil {
			return nil
		}
		return fallback.WithContext(ctx)
	}
	if fallback != nil && link.next != nil {
		// Several transactions (Lockers of several databases): the one on
		// fallback's pool, else the one whose DSN names fallback's server
		// and schema (another pool of the same database).
		if pool, err := fallback.DB(); err == nil {
			for l := link; l != nil; l = l.next {
				if l.s.pool == pool {
					return l.s.tx.WithContext(ctx)
				}
			}
		}
		if id := dsnIdent(fallback); id != "" {
			for l := link; l != nil; l = l.next {
				if l.s.dsnIdent() == id {
					return l.s.tx.WithContext(ctx)
				}
			}
		}
	}
	return link.s.tx.WithContext(ctx)
}
