package gooselock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/pressly/goose/v3/lock"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/migrations"
	"github.com/txlock/txlock/schema"
)

// ErrNotLocked is returned by Unlock when the Locker holds no lock: Unlock
// without a successful Lock, or a second Unlock.
var ErrNotLocked = errors.New("gooselock: Unlock without a held lock")

// A Locker is a goose lock.Locker on txlock: Lock holds a dblock lock in a
// transaction of its own until Unlock. Give it to goose with
// goose.WithLocker. A Locker holds at most one lock at a time: a second
// Lock waits for the Unlock of the first, within the same bound as a wait
// for another process. It is safe for concurrent use.
type Locker struct {
	cfg config
	// sem is full while the Locker holds its lock (from Lock to Unlock).
	sem chan struct{}

	mu   sync.Mutex
	held *hold
}

var _ lock.Locker = (*Locker)(nil)

// minPoolSize is the least MaxOpenConns of goose's pool that Lock accepts.
const minPoolSize = 3

// New returns a Locker configured by opts; with none, it holds
// dblock.Operation(DefaultOperation) in the table tb_lock, waits up to
// DefaultWaitTimeout, and has dblock's default lease. Invalid options fail
// here, naming the option.
func New(opts ...Option) (*Locker, error) {
	cfg := config{
		key:   dblock.Operation(DefaultOperation),
		wait:  DefaultWaitTimeout,
		table: schema.DefaultTable,
	}
	for _, opt := range opts {
		if opt == nil {
			return nil, errors.New("gooselock: New: nil Option")
		}
		if err := opt(&cfg); err != nil {
			return nil, err
		}
	}
	return &Locker{cfg: cfg, sem: make(chan struct{}, 1)}, nil
}

// hold is one held lock: the dblock Locker opened on goose's pool for it,
// its side pool, and the lock.
type hold struct {
	dl     *dblock.Locker
	side   *sql.DB
	lk     *dblock.Lock
	cancel context.CancelCauseFunc // ends the lock's context, after the release
	// released is closed by Unlock before it ends the lock; watched is
	// closed when the loss watcher has returned.
	released chan struct{}
	watched  chan struct{}
}

// Lock takes the lock on db, the pool goose passes, waiting while another
// process holds it: at most the WaitTimeout option, and no later than
// ctx's deadline. Running out gives an error matching
// dblock.ErrNotAcquired; cancelling ctx ends the wait. The lock is held in
// a transaction of its own, on a connection of db that goose's migrations
// do not use, until Unlock; ctx may end before then. When txlock's lock
// table is missing, Lock creates it (migrations.Up) and tries again.
func (l *Locker) Lock(ctx context.Context, db *sql.DB) error {
	if db == nil {
		return errors.New("gooselock: Lock: nil *sql.DB")
	}
	if n := db.Stats().MaxOpenConnections; n > 0 && n < minPoolSize {
		// goose holds one connection while it calls Lock: a smaller pool
		// would leave Lock waiting for a connection with no bound.
		return fmt.Errorf("gooselock: Lock: goose's *sql.DB allows %d open connections (SetMaxOpenConns); the lock needs %d: goose's own, the lock's and one for short statements beside it", n, minPoolSize)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("gooselock: Lock of %s: the context has ended: %w", l.cfg.key, context.Cause(ctx))
	}
	start := time.Now()
	wait := l.cfg.wait
	byDeadline := false
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
		wait, byDeadline = time.Until(dl), true
	}
	if err := l.reserve(ctx, wait, byDeadline); err != nil {
		return err
	}
	h, err := l.acquire(ctx, db, wait-time.Since(start), byDeadline)
	if err != nil {
		<-l.sem
		return err
	}
	l.mu.Lock()
	l.held = h
	l.mu.Unlock()
	go h.watch(l.cfg.logger, l.cfg.key)
	return nil
}

// reserve waits, at most wait, until the Locker holds no lock; byDeadline
// says that ctx's deadline set wait.
func (l *Locker) reserve(ctx context.Context, wait time.Duration, byDeadline bool) error {
	select {
	case l.sem <- struct{}{}:
		return nil
	default:
	}
	if wait > 0 {
		timer := time.NewTimer(wait)
		defer timer.Stop()
		select {
		case l.sem <- struct{}{}:
			return nil
		case <-ctx.Done():
			if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return l.lockError(ctx, ctx.Err(), false)
			}
			byDeadline = true
		case <-timer.C:
		}
	}
	err := fmt.Errorf("gooselock: Lock: %w: this Locker held %s for the whole wait (%v): Unlock it first",
		dblock.ErrNotAcquired, l.cfg.key, max(wait, 0))
	if byDeadline {
		return fmt.Errorf("%w (%w)", err, context.DeadlineExceeded)
	}
	return err
}

// acquire opens a dblock Locker on db and takes the key with it, waiting
// at most wait (set by ctx's deadline when byDeadline).
func (l *Locker) acquire(ctx context.Context, db *sql.DB, wait time.Duration, byDeadline bool) (*hold, error) {
	if wait <= 0 {
		return nil, l.lockError(ctx, context.DeadlineExceeded, byDeadline)
	}
	dopts := []dblock.Option{dblock.Table(l.cfg.table)}
	if l.cfg.logger != nil {
		dopts = append(dopts, dblock.Logger(l.cfg.logger))
	}
	dl, side, err := openSQLLocker(db, dopts...)
	if err != nil {
		return nil, fmt.Errorf("gooselock: Lock: %w", err)
	}
	// The lock's transaction lives on a context that ctx's end does not
	// reach once the lock is granted: goose runs its migrations after Lock
	// returns, and its ctx may end before Unlock. Until then, ctx's end
	// ends the wait.
	holdCtx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() { cancel(context.Cause(ctx)) })
	start := time.Now()
	lk, err := dl.Lock(holdCtx, l.cfg.key, l.lockOptions(wait)...)
	if errors.Is(err, dblock.ErrTableMissing) {
		err = l.createTable(ctx, db, wait-time.Since(start))
		if err == nil {
			lk, err = dl.Lock(holdCtx, l.cfg.key, l.lockOptions(wait-time.Since(start))...)
		}
	}
	if !stop() && err == nil {
		// ctx ended while the lock was being granted.
		_ = lk.Rollback()
		err = context.Cause(ctx)
	}
	if err != nil {
		cancel(nil)
		_ = dl.Close()
		_ = side.Close()
		return nil, l.lockError(ctx, err, byDeadline)
	}
	return &hold{dl: dl, side: side, lk: lk, cancel: cancel,
		released: make(chan struct{}), watched: make(chan struct{})}, nil
}

// lockOptions are the options of one acquisition that waits at most wait.
func (l *Locker) lockOptions(wait time.Duration) []dblock.LockOption {
	opts := []dblock.LockOption{dblock.WaitTimeout(max(wait, time.Millisecond))}
	if l.cfg.lease > 0 {
		opts = append(opts, dblock.Lease(l.cfg.lease))
	}
	return opts
}

// createTable creates txlock's lock table, waiting at most wait for
// another process creating it.
func (l *Locker) createTable(ctx context.Context, db *sql.DB, wait time.Duration) error {
	if wait <= 0 {
		return context.DeadlineExceeded
	}
	mopts := []migrations.Option{migrations.Table(l.cfg.table), migrations.LockTimeout(wait)}
	if l.cfg.logger != nil {
		mopts = append(mopts, migrations.Logger(l.cfg.logger))
	}
	if _, err := migrations.Up(ctx, db, mopts...); err != nil {
		return fmt.Errorf("creating the missing lock table %s: %w", l.cfg.table, err)
	}
	if l.cfg.logger != nil {
		l.cfg.logger.InfoContext(ctx, "gooselock: created the lock table", "table", l.cfg.table)
	}
	return nil
}

// lockError words an error of Lock. A wait that ctx's deadline ended
// (byDeadline: the deadline set the wait) matches dblock.ErrNotAcquired as
// well as context.DeadlineExceeded.
func (l *Locker) lockError(ctx context.Context, err error, byDeadline bool) error {
	switch {
	case errors.Is(err, dblock.ErrNotAcquired) && byDeadline && !errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("gooselock: Lock: %w (the context's deadline: %w)", err, context.DeadlineExceeded)
	case errors.Is(err, dblock.ErrNotAcquired), ctx.Err() == nil:
		return fmt.Errorf("gooselock: Lock: %w", err)
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("gooselock: Lock: %w: %s was held until the context's deadline: %w", dblock.ErrNotAcquired, l.cfg.key, err)
		}
		return fmt.Errorf("gooselock: Lock: %w: %s was held until the context's deadline: %w (%w)", dblock.ErrNotAcquired, l.cfg.key, context.DeadlineExceeded, err)
	case errors.Is(err, ctx.Err()):
		return fmt.Errorf("gooselock: Lock: waiting for %s: %w", l.cfg.key, err)
	}
	return fmt.Errorf("gooselock: Lock: waiting for %s: %w (%w)", l.cfg.key, ctx.Err(), err)
}

// watch logs the loss of the lock while it is held, until Unlock.
func (h *hold) watch(log *slog.Logger, key dblock.Key) {
	defer close(h.watched)
	select {
	case <-h.lk.Lost():
		if err := h.lk.Err(); err != nil && log != nil {
			log.Error("gooselock: lost the migration lock while goose held it: another process may be migrating now",
				"key", key.String(), "error", err)
		}
	case <-h.released:
	}
}

// Unlock releases the lock that Lock took, whatever ctx (goose passes one
// that is not cancelled; an expired or cancelled one releases all the
// same) and db (the lock lives on the connection Lock took). It returns an
// error wrapping dblock.ErrLockLost when the lock was lost while held (the
// lease ran out, the connection was closed or killed): another process may
// have run migrations meanwhile. Unlock without a held lock returns
// ErrNotLocked.
func (l *Locker) Unlock(_ context.Context, _ *sql.DB) error {
	l.mu.Lock()
	h := l.held
	l.held = nil
	l.mu.Unlock()
	if h == nil {
		return ErrNotLocked
	}
	defer func() { <-l.sem }()
	return h.release(l.cfg.key)
}

// release ends the hold: COMMIT (of nothing) proves that the transaction,
// and so the lock, lasted until now; when it fails the lock was lost.
func (h *hold) release(key dblock.Key) error {
	close(h.released)
	err := h.lk.Commit()
	if err != nil {
		_ = h.lk.Rollback()
	}
	<-h.watched
	h.cancel(nil)
	err = errors.Join(err, h.dl.Close(), h.side.Close())
	if err != nil {
		return fmt.Errorf("gooselock: Unlock of %s: %w", key, err)
	}
	return nil
}
