package dblock

import (
	"context"
	"sync"

	"gorm.io/gorm"
)

// ctxKey is the context key of the transaction scope.
type ctxKey struct{}

// txScope is a transaction carried by a context, with the keys it holds.
// It lives as long as the transaction; its held keys are released together
// when the transaction ends.
type txScope struct {
	tx *gorm.DB

	mu     sync.Mutex
	first  heldKey              // the first key held (most transactions hold one)
	nheld  int                  // how many keys are held
	more   map[heldKey]struct{} // the keys after the first
	tokens map[Key]int64        // fencing tokens taken in this transaction
	// fresh: the library opened the transaction with a lock as its first
	// statement, so its first lock cannot have a stale snapshot.
	fresh   bool
	guarded bool
	ended   error // set when the Lock that owns the transaction released or lost it
}

type heldKey struct {
	table string
	key   Key
}

// end records that the transaction ended (err says how), so that a context
// that still carries the scope cannot join it.
func (s *txScope) end(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended == nil {
		s.ended = err
	}
}

// endedErr returns why the transaction ended, or nil while it is open (as
// far as the library knows: a caller's own transaction is not tracked).
func (s *txScope) endedErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ended
}

func (s *txScope) holds(l *Locker, k Key) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	hk := heldKey{l.cfg.table, k}
	if s.nheld > 0 && s.first == hk {
		return true
	}
	_, ok := s.more[hk]
	return ok
}

// holdsAny reports whether the transaction holds any key.
func (s *txScope) holdsAny() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nheld > 0
}

// add records that the transaction holds k, with its fencing token when
// token is not 0.
func (s *txScope) add(l *Locker, k Key, token int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	hk := heldKey{l.cfg.table, k}
	switch {
	case s.nheld == 0:
		s.first = hk
	case s.first == hk:
		return
	default:
		if s.more == nil {
			s.more = make(map[heldKey]struct{}, 2)
		}
		if _, ok := s.more[hk]; ok {
			return
		}
		s.more[hk] = struct{}{}
	}
	s.nheld++
	if token != 0 {
		if s.tokens == nil {
			s.tokens = make(map[Key]int64, 1)
		}
		s.tokens[k] = token
	}
}

// needsGuard reports whether a lock just taken may follow reads of the
// transaction: any lock of a transaction the caller opened, any lock after
// the first ones of a transaction the library opened.
func (s *txScope) needsGuard() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.guarded && (!s.fresh || s.nheld > 0)
}

func (s *txScope) isGuarded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.guarded
}

func (s *txScope) setGuarded() {
	s.mu.Lock()
	s.guarded = true
	s.mu.Unlock()
}

// WithTx returns a copy of ctx that carries tx, a transaction the caller
// opened with gorm. A Do under the returned context joins tx instead of
// opening a transaction: its lock is held until tx ends, and its fn writes
// through tx. Repositories reach tx with DB. A nil tx returns ctx unchanged.
func WithTx(ctx context.Context, tx *gorm.DB) context.Context {
	if tx == nil {
		return ctx
	}
	return context.WithValue(ctx, ctxKey{}, &txScope{tx: tx})
}

// TxFrom returns the transaction ctx carries (from WithTx, Do or
// Lock.Context), if any.
func TxFrom(ctx context.Context) (*gorm.DB, bool) {
	if s := scopeFrom(ctx); s != nil {
		return s.tx, true
	}
	return nil, false
}

// DB returns the transaction ctx carries, bound to ctx, or
// fallback.WithContext(ctx) when ctx carries none. Repositories call it so
// that their statements run inside the caller's lock transaction when there
// is one. It returns nil when there is no transaction and fallback is nil.
func DB(ctx context.Context, fallback *gorm.DB) *gorm.DB {
	if s := scopeFrom(ctx); s != nil {
		return s.tx.WithContext(ctx)
	}
	if fallback == nil {
		return nil
	}
	return fallback.WithContext(ctx)
}

func scopeFrom(ctx context.Context) *txScope {
	if ctx == nil {
		return nil
	}
	s, _ := ctx.Value(ctxKey{}).(*txScope)
	return s
}

// sameTx reports whether a and b are handles on the same transaction.
func sameTx(a, b *gorm.DB) bool {
	return a != nil && b != nil && a.Statement != nil && b.Statement != nil && a.Statement.ConnPool == b.Statement.ConnPool
}
